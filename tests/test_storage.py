"""Store: the same behaviour on a local directory and on a real S3 server (SeaweedFS)."""

import os
import pickle

import pytest

from msca.storage import BucketNotFoundError, LocalStore, S3Store, StoreAuthError, is_remote, open_store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(str(tmp_path / "root"))
    srv = request.getfixturevalue("s3_server")
    return srv.store(f"s3://{srv.make_bucket()}/some/prefix")


def test_open_store_kinds(tmp_path):
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    assert isinstance(open_store("file://" + str(tmp_path)), LocalStore)
    assert isinstance(open_store("s3://b/p", endpoint_url="http://127.0.0.1:1"), S3Store)
    assert is_remote("s3://b/p") and not is_remote(str(tmp_path))
    assert open_store("s3://b/p/", endpoint_url="http://x").url("k/v") == "s3://b/p/k/v"
    assert open_store(str(tmp_path)).url("a/b") == str(tmp_path / "a" / "b")
    with pytest.raises(ValueError):
        open_store(str(tmp_path)).read_bytes("../escape")


def test_roundtrip(store):
    assert not store.exists("a/b.bin")
    store.write_bytes("a/b.bin", b"\x00\x01data")
    store.write_text("a/c/d.txt", "héllo")
    store.write_text("top.txt", "x")
    assert store.exists("a/b.bin") and store.read_bytes("a/b.bin") == b"\x00\x01data"
    assert store.read_text("a/c/d.txt") == "héllo"
    assert store.size("a/b.bin") == 6
    assert store.list() == ["a/b.bin", "a/c/d.txt", "top.txt"]
    assert store.list("a") == ["a/b.bin", "a/c/d.txt"]
    assert store.list("a/c/") == ["a/c/d.txt"]
    assert store.list("nothing") == []
    child = store.child("a")
    assert child.read_bytes("c/d.txt") == "héllo".encode() and child.url("c/d.txt") == store.url("a/c/d.txt")
    store.write_bytes("a/b.bin", b"new")  # overwrite
    assert store.read_bytes("a/b.bin") == b"new"
    store.delete("a/b.bin")
    store.delete("a/b.bin")  # missing is fine
    assert not store.exists("a/b.bin")
    assert store.delete_prefix("a") == 1 and store.list() == ["top.txt"]


def test_missing_names_full_uri(store):
    with pytest.raises(FileNotFoundError, match=store.url("no/such.jpg").replace("/", ".")):
        store.read_bytes("no/such.jpg")
    with pytest.raises(FileNotFoundError):
        store.size("no/such.jpg")


def test_read_many_returns_errors_in_order(store):
    store.write_many([(f"f/{i}", bytes([i])) for i in range(5)])
    out = store.read_many(["f/3", "f/missing", "f/0", "f/4"], max_workers=4)
    assert out[0] == b"\x03" and out[2] == b"\x00" and out[3] == b"\x04"
    assert isinstance(out[1], FileNotFoundError)


def test_files_and_multipart(store, tmp_path):
    big = os.urandom(20 * 1024 * 1024 + 123)  # > multipart threshold (16 MiB): parallel parts
    src = tmp_path / "big.bin"
    src.write_bytes(big)
    store.upload_file(str(src), "ckpt/big.bin")
    assert store.size("ckpt/big.bin") == len(big)
    dst = tmp_path / "out" / "big.bin"
    store.download_file("ckpt/big.bin", str(dst))
    assert dst.read_bytes() == big
    with pytest.raises(FileNotFoundError):
        store.download_file("ckpt/none.bin", str(tmp_path / "none"))
    assert not (tmp_path / "none").exists()


def test_pickle_and_fork_safe(store):
    store.write_bytes("k", b"v")
    clone = pickle.loads(pickle.dumps(store))
    assert clone.uri == store.uri and clone.read_bytes("k") == b"v"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the parent's client/pool must not be reused
        try:
            ok = store.read_many(["k", "k"], max_workers=2) == [b"v", b"v"]
        finally:
            os.write(w, b"1" if ok else b"0")
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(r, 1) == b"1"


def test_s3_wrong_credentials_is_clear(s3_server):
    bucket = s3_server.make_bucket()
    bad = open_store(
        f"s3://{bucket}/x",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key="wrong-secret",
        max_attempts=1,
    )
    with pytest.raises(StoreAuthError, match=f"(?s){bucket}.*127.0.0.1.*AWS_ACCESS_KEY_ID"):
        bad.read_bytes("k")
    with pytest.raises(StoreAuthError):
        bad.exists("k")
    unknown = open_store(
        f"s3://{bucket}/x",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id="nobody",
        aws_secret_access_key="wrong-secret",
        max_attempts=1,
    )
    with pytest.raises(StoreAuthError, match="AWS_SECRET_ACCESS_KEY"):
        unknown.list()


def test_s3_missing_bucket_is_clear(s3_server):
    st = s3_server.store("s3://no-such-bucket-xyz/p")
    with pytest.raises(BucketNotFoundError, match="no-such-bucket-xyz"):
        st.read_bytes("k")
    with pytest.raises(BucketNotFoundError, match="no-such-bucket-xyz"):
        st.exists("k")
    with pytest.raises(BucketNotFoundError):
        st.list()


def test_s3_config_from_env(s3_env):
    """Endpoint from MSCA_S3_ENDPOINT, credentials and region from the standard boto3 env chain."""
    bucket = s3_env.make_bucket()
    st = open_store(f"s3://{bucket}")
    st.write_text("hello.txt", "world")
    assert s3_env.store(f"s3://{bucket}").read_text("hello.txt") == "world"


def test_s3_reads_handle_awkward_keys(s3_server):
    """Kinetics folder names have spaces, parentheses and quotes: the read path must encode them as S3 does."""
    bucket = s3_server.make_bucket()
    st = s3_server.store(f"s3://{bucket}/k 400")
    keys = ["air drumming/v (1)/img_00001.jpg", "tying knot (not on a tie)/ü'x+y=z&w.jpg", "a~b/c,d;e@f$.jpg"]
    st.write_many([(k, k.encode()) for k in keys])
    assert st.read_many(keys) == [k.encode() for k in keys]
    assert [st.read_range(k, 2, 7) for k in keys] == [k.encode()[2:7] for k in keys]
    assert st.read_range(keys[0], 5, 10_000) == keys[0].encode()[5:]  # fewer bytes past the end
    assert st.read_range(keys[0], 10_000, 10_010) == b""


def test_local_delete_prunes_empty_folders(tmp_path):
    st = open_store(str(tmp_path / "r"))
    st.write_bytes("a/b/c.bin", b"1")
    st.write_bytes("a/d.bin", b"2")
    st.delete("a/b/c.bin")
    assert not (tmp_path / "r" / "a" / "b").exists() and (tmp_path / "r" / "a" / "d.bin").exists()
    st.delete("a/d.bin")
    assert (tmp_path / "r").exists() and not (tmp_path / "r" / "a").exists()
    st.write_bytes("a/b/c.bin", b"3")  # folders come back on the next write
    assert st.read_bytes("a/b/c.bin") == b"3"


def test_conditional_writes(store):
    """Leases rest on these: create-if-absent and compare-and-swap, each decided by the store (S3: If-None-Match
    / If-Match on a real SeaweedFS; locally: link(2) and an flock)."""
    assert store.write_if_absent("lease.json", b"first") is True
    assert store.write_if_absent("lease.json", b"second") is False
    data, v1 = store.read_versioned("lease.json")
    assert data == b"first"
    assert store.write_if_version("lease.json", b"renewed", v1) is True
    assert store.write_if_version("lease.json", b"stale writer", v1) is False  # v1 is no longer current
    data, v2 = store.read_versioned("lease.json")
    assert data == b"renewed" and v2 != v1
    assert store.write_if_version("missing.json", b"x", v2) is False
    assert store.list() == ["lease.json"]  # no lock or temp files visible
