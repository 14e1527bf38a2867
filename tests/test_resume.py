"""Reliability: determinism, resume after SIGKILL, and clear failures (NaN, bad checkpoint, bad output dir)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import data as data_lib
import irkd
import runs
from conftest import ROOT, write_cifar


def tiny_cfg(tmp_path, **kw):
    base = dict(name="r", model="custom", cl=True, resolutions=(16, 32), epochs=4, batch_size=32,
                train_size=128, val_size=64, test_size=64, out=str(tmp_path), device="cpu")
    return irkd.Config(**(base | kw))


def test_same_seed_same_results(tmp_path, train_data):
    a = irkd.train(tiny_cfg(tmp_path / "a"), data=train_data)
    b = irkd.train(tiny_cfg(tmp_path / "b"), data=train_data)
    assert a["heads"] == b["heads"]
    log = lambda d: [(r["loss"], r["val_acc"]) for r in map(json.loads, open(d / "r" / "log.jsonl"))]  # noqa: E731
    assert log(tmp_path / "a") == log(tmp_path / "b")
    c = irkd.train(tiny_cfg(tmp_path / "c", seed=1), data=train_data)
    assert log(tmp_path / "c") != log(tmp_path / "a")  # the seed does matter


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    root = tmp_path / "data"
    write_cifar(root, n_per_batch=1100, n_test=64)  # 5,500 images: 500 train after the 5,000 val split
    args = [sys.executable, "experiments.py", "custom_p4_cl", f"--data={root}", "--device=cpu",
            "--resolutions=16,32", "--epochs=4", "--batch_size=32", "--train_size=480", "--val_size=64",
            "--test_size=64"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(args + [f"--out={tmp_path / 'full'}"], cwd=ROOT, env=env, check=True, capture_output=True)

    out = tmp_path / "killed"
    log = out / "custom_p4_cl" / "log.jsonl"
    child = subprocess.Popen(args + [f"--out={out}"], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (log.exists() and log.read_text().count("\n") >= 1) and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)                                  # into epoch 2 (or 3): mid-epoch, mid-whatever
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not (out / "custom_p4_cl" / "results.json").exists(), "the run finished before the kill"
    killed_at = torch.load(out / "custom_p4_cl" / "checkpoint.pt", weights_only=False)["epoch"]
    assert 1 <= killed_at < 4

    r = subprocess.run(args + [f"--out={out}"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"after epoch {killed_at}/4" in r.stdout + r.stderr
    full = json.load(open(tmp_path / "full" / "custom_p4_cl" / "results.json"))
    resumed = json.load(open(out / "custom_p4_cl" / "results.json"))
    assert resumed["heads"] == full["heads"]
    a = torch.load(tmp_path / "full" / "custom_p4_cl" / "model.pt", weights_only=True)["model"]
    b = torch.load(out / "custom_p4_cl" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in open(log)]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, train_data, monkeypatch):
    calls = {"n": 0}
    real = irkd.IRKDLoss.forward

    def poisoned(self, *a, **kw):
        calls["n"] += 1
        loss, parts = real(self, *a, **kw)
        return (loss * float("nan"), parts) if calls["n"] == 6 else (loss, parts)  # epoch 2, step 5

    monkeypatch.setattr(irkd.IRKDLoss, "forward", poisoned)
    with pytest.raises(FloatingPointError, match=r"stage 0 \(16 px\), epoch 2, step 5"):
        irkd.train(tiny_cfg(tmp_path), data=train_data)
    assert torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)["epoch"] == 1
    assert not (tmp_path / "r" / "results.json").exists()


def test_truncated_checkpoint_is_named(tmp_path, train_data):
    irkd.train(tiny_cfg(tmp_path, epochs=2), data=train_data)
    path = tmp_path / "r" / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated or corrupt.*--resume=false"):
        irkd.train(tiny_cfg(tmp_path, epochs=2), data=train_data)
    irkd.train(tiny_cfg(tmp_path, epochs=2, resume=False), data=train_data)  # the way out works


def test_resume_refuses_a_different_config(tmp_path, train_data):
    irkd.train(tiny_cfg(tmp_path, epochs=2), data=train_data)
    with pytest.raises(ValueError, match="lr differ"):
        irkd.train(tiny_cfg(tmp_path, epochs=2, lr=1e-3), data=train_data)


def test_resume_fills_fields_added_since_with_defaults(tmp_path, train_data, capsys):
    # A checkpoint written before a Config field existed resumes when the field is at its default.
    irkd.train(tiny_cfg(tmp_path, epochs=2), data=train_data)
    path = tmp_path / "r" / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=False)
    del ckpt["config"]["erasing"]
    torch.save(ckpt, path)
    assert runs.resume_state(tiny_cfg(tmp_path, epochs=2), str(tmp_path / "r"), None) is not None
    with pytest.raises(ValueError, match="erasing differ"):
        runs.resume_state(tiny_cfg(tmp_path, epochs=2, erasing=0.5), str(tmp_path / "r"), None)


def test_unwritable_output_dir(tmp_path, train_data):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match="cannot write to the output directory.*--out"):
        irkd.train(tiny_cfg(blocker), data=train_data)


def test_ctrl_c_prints_the_resume_command(monkeypatch, capsys):
    import experiments

    def interrupted(cfg, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(data_lib, "load_cifar10", lambda root: {})
    monkeypatch.setattr(irkd, "train", interrupted)
    monkeypatch.setattr(sys, "argv", ["experiments.py", "custom_p4_ce", "--epochs=6"])
    assert experiments.main(["custom_p4_ce", "--epochs=6"]) == 130
    err = capsys.readouterr().err
    assert "Resume with:" in err and "python experiments.py custom_p4_ce --epochs=6" in err
