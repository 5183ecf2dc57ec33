"""The S3 read path (obstore) goes where users point it: through the proxy HTTP_PROXY/HTTPS_PROXY names (unless
NO_PROXY says direct), to an https endpoint signed by a private CA named by AWS_CA_BUNDLE, with credentials from a
shared credentials file profile. Real relays (tests/net_relays.py) in front of a real SeaweedFS."""

import pickle
import socket
import time

import pytest
from net_relays import HttpProxy, TlsFront

from msca.storage import StoreAuthError, open_store

_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy", "ALL_PROXY")


@pytest.fixture
def frames(s3_server, monkeypatch):
    for v in _PROXY_VARS + ("AWS_CA_BUNDLE",):
        monkeypatch.delenv(v, raising=False)
    bucket = s3_server.make_bucket()
    s3_server.store(f"s3://{bucket}/f").write_many([("v/img_00001.jpg", b"jpeg-1"), ("v/img_00002.jpg", b"jpeg-2")])
    return bucket


def test_reads_go_through_the_proxy_the_env_names(s3_server, frames, monkeypatch):
    proxy = HttpProxy()
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")  # the endpoint is http://
        st = s3_server.store(f"s3://{frames}/f")
        assert st.read_bytes("v/img_00001.jpg") == b"jpeg-1"
        assert st.read_range("v/img_00002.jpg", 1, 4) == b"peg"
        assert any(f"/{frames}/f/v/img_00001.jpg" in line for line in proxy.seen), proxy.seen
        clone = pickle.loads(pickle.dumps(st))  # a loader worker's copy takes the same route
        n = len(proxy.seen)
        assert clone.read_bytes("v/img_00002.jpg") == b"jpeg-2" and len(proxy.seen) > n

        monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # ... unless NO_PROXY says direct
        n = len(proxy.seen)
        assert s3_server.store(f"s3://{frames}/f").read_bytes("v/img_00001.jpg") == b"jpeg-1"
        assert len(proxy.seen) == n
    finally:
        proxy.close()


def test_a_dead_proxy_is_not_bypassed(s3_server, frames, monkeypatch):
    """Where direct traffic is dropped, the proxy is the route: a dead one fails in bounded time, one line."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    st = open_store(
        f"s3://{frames}/f",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
        retry_s=2,
    )
    t0 = time.time()
    with pytest.raises(ConnectionError) as err:
        st.read_bytes("v/img_00001.jpg")
    assert time.time() - t0 < 2 + 5 + 5  # deadline + one connect timeout + slack for a loaded machine
    assert "did not answer" in str(err.value) and "HTTP_PROXY" in str(err.value) and "\n" not in str(err.value)


def test_https_endpoint_with_a_private_ca_bundle(s3_server, frames, monkeypatch, tmp_path):
    port = int(s3_server.endpoint_url.rsplit(":", 1)[1])
    front = TlsFront(tmp_path / "tls", ("127.0.0.1", port))
    try:
        kw = dict(
            endpoint_url=f"https://localhost:{front.port}",
            aws_access_key_id=s3_server.access_key,
            aws_secret_access_key=s3_server.secret_key,
        )
        untrusted = open_store(f"s3://{frames}/f", retry_s=1, **kw)
        with pytest.raises(ConnectionError):  # without the bundle the certificate is refused
            untrusted.read_bytes("v/img_00001.jpg")
        assert any(s.startswith("handshake failed") for s in front.seen)
        monkeypatch.setenv("AWS_CA_BUNDLE", front.ca_pem)
        st = open_store(f"s3://{frames}/f", **kw)
        assert st.read_bytes("v/img_00001.jpg") == b"jpeg-1" and "tls" in front.seen
        proxy = HttpProxy()  # an https endpoint behind a proxy: a CONNECT tunnel, TLS end to end
        try:
            monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
            st = open_store(f"s3://{frames}/f", **kw)
            assert st.read_bytes("v/img_00002.jpg") == b"jpeg-2"
            assert proxy.seen and proxy.seen[0].startswith(f"CONNECT localhost:{front.port} "), proxy.seen
        finally:
            proxy.close()
    finally:
        front.close()


def test_credentials_from_a_shared_credentials_profile(s3_server, frames, monkeypatch, tmp_path):
    """obstore alone reads only env credentials: ours come from boto3's chain, so profiles work too."""
    for v in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(v, raising=False)
    creds = tmp_path / "credentials"
    creds.write_text(
        f"[msca]\naws_access_key_id = {s3_server.access_key}\naws_secret_access_key = {s3_server.secret_key}\n"
        "[stale]\naws_access_key_id = nobody\naws_secret_access_key = wrong\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_PROFILE", "msca")
    st = open_store(f"s3://{frames}/f", endpoint_url=s3_server.endpoint_url, region_name="us-east-1")
    assert st.read_bytes("v/img_00001.jpg") == b"jpeg-1"
    monkeypatch.setenv("AWS_PROFILE", "stale")
    st = open_store(f"s3://{frames}/f", endpoint_url=s3_server.endpoint_url, region_name="us-east-1")
    with pytest.raises(StoreAuthError, match="InvalidAccessKeyId"):
        st.read_bytes("v/img_00001.jpg")
