"""CheckpointManager's commit protocol against a real S3 server: the upload runs in the background, the
manifest is written only by `wait()` (next save / stop / end), and a failed upload never commits.

The engine here is a stand-in that writes files the way DeepSpeed's save_checkpoint does (real DeepSpeed
engines are exercised end to end in test_resume.py); everything else is real."""

import hashlib
import json
import threading

import pytest

from msca.runstate.checkpoint import CheckpointManager
from msca.runstate.home import RunHome


class FileWritingEngine:
    def zero_optimization_stage(self):
        return 2

    def save_checkpoint(self, root, tag, client_state, save_latest):
        from pathlib import Path

        d = Path(root) / tag
        d.mkdir(parents=True, exist_ok=True)
        (d / "mp_rank_00_model_states.pt").write_bytes(json.dumps(client_state["trainer"]).encode() * 1000)
        (d / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"o" * 5000)


def manager(s3_server, **kw):
    bucket = s3_server.make_bucket()
    home = RunHome(f"s3://{bucket}/runs/x", endpoint_url=s3_server.endpoint_url)
    return CheckpointManager(FileWritingEngine(), home, keep_last=2, **kw), home


def test_background_upload_commits_only_on_wait(s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("MSCA_CACHE", str(tmp_path / "cache"))
    ckpt, home = manager(s3_env)
    release = threading.Event()
    real_upload = home.store.child("checkpoints").upload_file

    ckpt.store.upload_file = lambda *a: (release.wait(30), real_upload(*a))  # hold the upload in flight
    ckpt.save(5, {"epoch": 0, "position": 10, "step": 5})
    assert not ckpt.store.exists("step_000000005/MANIFEST.json")  # training goes on; nothing committed yet
    assert ckpt.committed_steps() == []
    ckpt.commit_if_ready()  # still uploading: a step boundary does not wait for it
    assert ckpt.committed_steps() == []
    release.set()
    ckpt._pending.thread.join()
    ckpt.commit_if_ready()  # uploads done: committed at the next step boundary
    manifest = json.loads(ckpt.store.read_text("step_000000005/MANIFEST.json"))
    assert manifest["trainer"] == {"epoch": 0, "position": 10, "step": 5}
    for obj in manifest["objects"]:
        assert hashlib.sha256(ckpt.store.read_bytes(obj["key"])).hexdigest() == obj["sha256"]
    assert not any(ckpt.staging.iterdir())  # node-local staging cleaned after the commit

    for step in (6, 7):  # each save commits the previous one first; retention keeps the last two
        ckpt.save(step, {"epoch": 0, "position": 0, "step": step})
    ckpt.wait()
    assert ckpt.committed_steps() == [6, 7]


def test_failed_upload_is_reported_and_never_committed(s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("MSCA_CACHE", str(tmp_path / "cache"))
    ckpt, _ = manager(s3_env)
    ckpt.save(1, {"epoch": 0, "position": 0, "step": 1})
    ckpt.wait()

    def broken(*args):
        raise ConnectionError("endpoint went away")

    ckpt.store.upload_file = broken
    ckpt.save(2, {"epoch": 0, "position": 0, "step": 2})
    with pytest.raises(RuntimeError, match="step_000000002.*not committed.*endpoint went away"):
        ckpt.wait()
    assert ckpt.committed_steps() == [1]
    assert ckpt.newest_complete()["step"] == 1
