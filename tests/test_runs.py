"""runs.py: run bookkeeping and reliability around train_lib.train. Determinism; resume after
Ctrl-C and after SIGKILL, bit-identical (also with the teacher recipe's augmentation);
clear failures (NaN loss, truncated checkpoint, changed config, unwritable output dir);
Ctrl-C's resume hint (guarded); compile_model; keep_freed_memory; parse_overrides.

Oracles: the uninterrupted run of the same config (weights, heads and log compared bit for
bit, or to within 1 % point for the compiled runs, whose weights match to 1e-4); a second
run with the same seed; the last good checkpoint on disk; parse_overrides' typed values
written out by hand; glibc or not (platform.libc_ver) for keep_freed_memory. Inductor's C++
code generation takes minutes on a small CPU, so the compile tests use the "aot_eager"
backend: the same dynamo capture and AOT-autograd graphs per resolution, without codegen.
"""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import data as data_lib
import train as train_lib
import irkd
import runs
from conftest import ROOT, read_log, small_cfg, tiny_vit, write_cifar


def tiny_cfg(tmp_path, **kw):
    """Curriculum 16 then 32 px, 4 epochs, 128 training images: 4 steps per epoch."""
    base = dict(name="r", model="custom", cl=True, resolutions=(16, 32), epochs=4, batch_size=32,
                train_size=128, val_size=64, test_size=64, out=str(tmp_path), device="cpu")
    return train_lib.RunConfig(**(base | kw))


def interrupt_at_step(monkeypatch, n):
    """Make irkd.train_step raise KeyboardInterrupt on its n-th call; returns the real one."""
    real, calls = irkd.train_step, {"n": 0}

    def interrupted(*a, **kw):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(irkd, "train_step", interrupted)
    return real


def same_weights(a_path, b_path):
    a = torch.load(a_path, weights_only=True)["model"]
    b = torch.load(b_path, weights_only=True)["model"]
    return all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- determinism

def test_same_seed_same_results(tmp_path, train_data):
    a = train_lib.train(tiny_cfg(tmp_path / "a"), data=train_data)
    b = train_lib.train(tiny_cfg(tmp_path / "b"), data=train_data)
    assert a["heads"] == b["heads"]
    log = lambda d: [(r["loss"], r["val_acc"]) for r in read_log(d / "r")]  # noqa: E731
    assert log(tmp_path / "a") == log(tmp_path / "b")
    train_lib.train(tiny_cfg(tmp_path / "c", seed=1), data=train_data)
    assert log(tmp_path / "c") != log(tmp_path / "a")  # the seed does matter


# ----------------------------------------------------------------------------- resume after SIGKILL

def cli_args(root):
    """experiments.py on the data under root: 480 training images, 16 then 32 px, 4 epochs."""
    return [sys.executable, "experiments.py", "custom_p4_cl", f"--data={root}", "--device=cpu",
            "--resolutions=16,32", "--epochs=4", "--batch_size=32", "--train_size=480",
            "--val_size=64", "--test_size=64"]


def kill_mid_run(args, out, env):
    """Start the run, SIGKILL it once an epoch is logged; returns the checkpoint's epoch."""
    log = out / "custom_p4_cl" / "log.jsonl"
    child = subprocess.Popen(args + [f"--out={out}"], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600                    # generous: the CPU may be shared
    while not (log.exists() and log.read_text().count("\n") >= 1) and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)                                  # into epoch 2 (or 3): mid-epoch, mid-whatever
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not (out / "custom_p4_cl" / "results.json").exists(), "the run finished before the kill"
    ckpt = torch.load(out / "custom_p4_cl" / "checkpoint.pt", weights_only=False)
    return ckpt["epoch"]


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    root = tmp_path / "data"
    write_cifar(root, n_per_batch=1100, n_test=64)  # 5,500 images: 500 train after 5,000 val
    args, env = cli_args(root), dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(args + [f"--out={tmp_path / 'full'}"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    out = tmp_path / "killed"
    killed_at = kill_mid_run(args, out, env)
    assert 1 <= killed_at < 4
    r = subprocess.run(args + [f"--out={out}"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"after epoch {killed_at}/4" in r.stdout + r.stderr
    full = json.load(open(tmp_path / "full" / "custom_p4_cl" / "results.json"))
    resumed = json.load(open(out / "custom_p4_cl" / "results.json"))
    assert resumed["heads"] == full["heads"]
    assert same_weights(tmp_path / "full" / "custom_p4_cl" / "model.pt",
                        out / "custom_p4_cl" / "model.pt")
    assert [r["epoch"] for r in read_log(out / "custom_p4_cl")] == [1, 2, 3, 4]


# ----------------------------------------------------------------------------- resume after Ctrl-C

def recipe_cfg(tmp_path, **kw):
    """The teacher recipe's training: onecycle, label smoothing, mixup, TrivialAugment, erasing."""
    base = dict(name="aug", model="custom", cl=False, epochs=2, batch_size=32, train_size=64,
                val_size=32, test_size=32, schedule="onecycle", warmup_epochs=1,
                label_smoothing=0.01, mixup=True, randaug=True, erasing=0.25, out=str(tmp_path),
                device="cpu", seed=0)
    return train_lib.RunConfig(**(base | kw))


@pytest.fixture(scope="module")
def recipe_full_run(tmp_path_factory, train_data):
    """recipe_cfg trained without interruption: (results, its out directory)."""
    out = tmp_path_factory.mktemp("recipe") / "full"
    return train_lib.train(recipe_cfg(out), data=train_data), out


# Oracle: the schedule and the loss by hand. 64 images / batch 32 = 2 steps per epoch, 4 in all,
# warm-up 1 epoch = 2 steps. A row logs its epoch's last step: step 1 at 3e-4 * 2/2 = 3e-4 (the
# warm-up's top), step 3 at 3e-4 * (1 + cos(pi * (3-2)/(4-2))) / 2 = 1.5e-4. Without a teacher
# the loss is the (smoothed, mixed) CE alone, which starts near ln 10 = 2.303 for 10 classes;
# train_acc counts hard labels, so it is a whole number of the epoch's 64 images.
def test_train_with_recipe_logs_its_schedule_and_a_ce_only_loss(recipe_full_run):
    _, out = recipe_full_run
    rows = read_log(out / "aug")
    assert [(r["epoch"], r["res"]) for r in rows] == [(1, 32), (2, 32)]
    assert rows[0]["lr"] == pytest.approx(3e-4, rel=1e-9)
    assert rows[1]["lr"] == pytest.approx(1.5e-4, rel=1e-9)
    for r in rows:
        assert r["loss"] == r["ce"] and r["kd"] == 0.0 and r["sal"] == 0.0
        correct = r["train_acc"] * 64 / 100
        assert correct == pytest.approx(round(correct), abs=1e-6) and 0 <= correct <= 64
    assert abs(rows[0]["loss"] - 2.303) < 0.35


# Oracle: the uninterrupted run; a run stopped in epoch 2 and resumed from checkpoint.pt must
# match it bit for bit (the augmentation generator is restored, not reseeded).
def test_train_with_recipe_resumes_bit_identical(tmp_path, train_data, recipe_full_run,
                                                 monkeypatch, capsys):
    full, full_out = recipe_full_run
    real = interrupt_at_step(monkeypatch, 4)        # 2 steps per epoch: epoch 2, step 2
    with pytest.raises(KeyboardInterrupt):
        train_lib.train(recipe_cfg(tmp_path / "cut"), data=train_data)
    monkeypatch.setattr(irkd, "train_step", real)
    resumed = train_lib.train(recipe_cfg(tmp_path / "cut"), data=train_data)
    assert "after epoch 1/2" in capsys.readouterr().out
    assert resumed["heads"] == full["heads"]
    assert same_weights(full_out / "aug" / "model.pt", tmp_path / "cut" / "aug" / "model.pt")
    assert [r["loss"] for r in read_log(tmp_path / "cut" / "aug")] == \
        [r["loss"] for r in read_log(full_out / "aug")]


def test_ctrl_c_prints_the_resume_command(monkeypatch, capsys):
    import experiments

    def interrupted(cfg, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(data_lib, "load_cifar10", lambda root: {})
    monkeypatch.setattr(experiments, "check_before_work", lambda cfgs, data: None)
    monkeypatch.setattr(train_lib, "train", interrupted)
    monkeypatch.setattr(sys, "argv", ["experiments.py", "custom_p4_ce", "--epochs=6"])
    assert experiments.main(["custom_p4_ce", "--epochs=6"]) == 130
    err = capsys.readouterr().err
    assert "Resume with:" in err and "python experiments.py custom_p4_ce --epochs=6" in err


# ----------------------------------------------------------------------------- clear failures

def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, train_data, monkeypatch):
    calls = {"n": 0}
    real = irkd.IRKDLoss.forward

    def poisoned(self, *a, **kw):
        calls["n"] += 1
        loss, parts = real(self, *a, **kw)
        return (loss * float("nan"), parts) if calls["n"] == 6 else (loss, parts)  # epoch 2, step 5

    monkeypatch.setattr(irkd.IRKDLoss, "forward", poisoned)
    with pytest.raises(FloatingPointError, match=r"stage 0 \(16 px\), epoch 2, step 5"):
        train_lib.train(tiny_cfg(tmp_path), data=train_data)
    assert torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)["epoch"] == 1
    assert not (tmp_path / "r" / "results.json").exists()


def test_truncated_checkpoint_is_named(tmp_path, train_data):
    train_lib.train(tiny_cfg(tmp_path, epochs=2), data=train_data)
    path = tmp_path / "r" / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated or corrupt.*--resume=false"):
        train_lib.train(tiny_cfg(tmp_path, epochs=2), data=train_data)
    with pytest.raises(ValueError, match="finished run.*--overwrite=true"):  # never silently
        train_lib.train(tiny_cfg(tmp_path, epochs=2, resume=False), data=train_data)
    train_lib.train(tiny_cfg(tmp_path, epochs=2, resume=False, overwrite=True),
               data=train_data)  # the way out


def test_resume_refuses_a_different_config(tmp_path, train_data):
    train_lib.train(tiny_cfg(tmp_path, epochs=2), data=train_data)
    with pytest.raises(ValueError, match="lr differ"):
        train_lib.train(tiny_cfg(tmp_path, epochs=2, lr=1e-3), data=train_data)


def test_resume_fills_fields_added_since_with_defaults(tmp_path, train_data, capsys):
    # A checkpoint written before a Config field existed resumes when the field is at its
    # default.
    train_lib.train(tiny_cfg(tmp_path, epochs=2), data=train_data)
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
        train_lib.train(tiny_cfg(blocker), data=train_data)


# ----------------------------------------------------------------------------- compile

@pytest.fixture
def aot_eager(monkeypatch):
    real = runs.compile_model
    compiled = []

    def compile_model(model, device, backend="inductor"):
        compiled.append(model)
        return real(model, device, backend="aot_eager")

    monkeypatch.setattr(runs, "compile_model", compile_model)
    torch._dynamo.reset()
    yield compiled
    torch._dynamo.reset()


# Oracle: the eager run of the same config. Curriculum (two resolutions, so two graphs),
# KD with a teacher and rollout saliency (the explicit attention path) all go through it.
def test_compiled_training_matches_eager(tmp_path, train_data, aot_eager):
    teacher = tiny_vit(patch_size=4)
    cfg = small_cfg(tmp_path / "eager", kd=True, sal=True)
    eager = train_lib.train(cfg, teacher=teacher, data=train_data)
    compiled = train_lib.train(dataclasses.replace(cfg, out=str(tmp_path / "compiled"), compile=True),
                          teacher=teacher, data=train_data)
    assert len(aot_eager) == 2                       # the student and the teacher
    assert compiled["test_acc_by_res"].keys() == eager["test_acc_by_res"].keys()
    for h in eager["heads"]:
        for r in eager["heads"][h]:
            assert compiled["heads"][h][r] == pytest.approx(eager["heads"][h][r], abs=1.0)  # % pts
    a = torch.load(tmp_path / "eager" / "t" / "model.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "compiled" / "t" / "model.pt", weights_only=False)["model"]
    assert a.keys() == b.keys()                   # saved through the eager module: no "_orig_mod."
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=1e-4)


# Oracle: the uninterrupted eager run. A run interrupted in eager mode continues compiled.
def test_eager_run_resumes_compiled(tmp_path, train_data, aot_eager, monkeypatch, capsys):
    cfg = small_cfg(tmp_path / "whole")
    whole = train_lib.train(cfg, data=train_data)
    real_step = interrupt_at_step(monkeypatch, 3)   # the first step of epoch 2 (2 steps/epoch)
    part = dataclasses.replace(cfg, out=str(tmp_path / "part"))
    with pytest.raises(KeyboardInterrupt):
        train_lib.train(part, data=train_data)
    monkeypatch.setattr(irkd, "train_step", real_step)
    resumed = train_lib.train(dataclasses.replace(part, compile=True), data=train_data)
    assert "after epoch 1/2" in capsys.readouterr().out
    assert len(aot_eager) == 1
    for r, acc in whole["test_acc_by_res"].items():
        assert resumed["test_acc_by_res"][r] == pytest.approx(acc, abs=1.0)


# ----------------------------------------------------------------------------- device, overrides

def test_keep_freed_memory_runs_in_a_fresh_process():
    # process-wide and irreversible, so not in the test process itself
    code = "import runs, platform; ok = runs.keep_freed_memory(); print(ok, platform.libc_ver()[0])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    ok, libc = out.stdout.split()
    assert ok == ("True" if libc == "glibc" else "False")


def test_parse_overrides_types():
    got = runs.parse_overrides(["--kd=false", "--cl", "--epochs=12", "--lr=1e-3",
                                "--resolutions=12,16", "--teacher", "runs/t/model.pt",
                                "--batch-size=64", "--sal=YES", "--alpha=0"], train_lib.RunConfig)
    assert got == dict(kd=False, cl=True, epochs=12, lr=1e-3, resolutions=(12, 16),
                       teacher="runs/t/model.pt", batch_size=64, sal=True, alpha=0.0)
    assert type(got["epochs"]) is int and type(got["lr"]) is float
    assert type(got["alpha"]) is float
    assert runs.parse_overrides([], train_lib.RunConfig) == {}
    for bad in (["lr=1"], ["--epochs"], ["--epochs=1.5"], ["--quick=perhaps"]):
        with pytest.raises(ValueError):
            runs.parse_overrides(bad, train_lib.RunConfig)


@pytest.mark.parametrize("name", ["gpu", "cuda:7", "tpu"])
def test_a_bad_device_is_refused_with_the_valid_names(name):
    if name.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has eight GPUs")
    with pytest.raises(ValueError, match="auto, cpu|no CUDA GPU|only .* GPU|not supported"):
        runs.pick_device(name)


def test_a_finished_run_is_never_overwritten_silently(tmp_path, train_data):
    train_lib.train(small_cfg(tmp_path, epochs=2), data=train_data)
    with pytest.raises(ValueError, match="finished run.*--overwrite=true"):
        train_lib.train(small_cfg(tmp_path, epochs=2, resume=False), data=train_data)


# Oracle: the uninterrupted run. The same directory spelled another way resumes it.
def test_resume_accepts_the_same_directory_spelled_differently(tmp_path, train_data, monkeypatch):
    whole = train_lib.train(small_cfg(tmp_path / "a", epochs=2), data=train_data)
    part = small_cfg(tmp_path / "b", epochs=2)
    real, calls = irkd.train_step, []

    def interrupted(*a, **kw):
        calls.append(1)
        if len(calls) == 3:                    # epoch 2, first step
            raise KeyboardInterrupt
        return real(*a, **kw)
    monkeypatch.setattr(irkd, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_lib.train(part, data=train_data)
    monkeypatch.setattr(irkd, "train_step", real)
    monkeypatch.chdir(tmp_path)
    resumed = train_lib.train(dataclasses.replace(part, out="./b"), data=train_data)
    assert resumed["heads"] == whole["heads"]


def test_exclusive_lets_one_process_in_at_a_time(tmp_path):
    import threading
    inside, most = [], []

    def work():
        with runs.exclusive(str(tmp_path / "x.lock"), "testing"):
            inside.append(1)
            most.append(len(inside))
            time.sleep(0.2)
            inside.pop()
    threads = [threading.Thread(target=work) for _ in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert most == [1, 1, 1]


def test_nan_in_the_first_epoch_does_not_promise_a_checkpoint(tmp_path, train_data, monkeypatch):
    real = irkd.IRKDLoss.forward

    def poisoned(self, *a, **kw):
        loss, parts = real(self, *a, **kw)
        return loss * float("nan"), parts
    monkeypatch.setattr(irkd.IRKDLoss, "forward", poisoned)
    with pytest.raises(FloatingPointError, match="no epoch had finished, so no checkpoint"):
        train_lib.train(tiny_cfg(tmp_path), data=train_data)
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_a_finished_run_without_its_checkpoint_is_not_trained_over(tmp_path, train_data):
    train_lib.train(small_cfg(tmp_path, epochs=2), data=train_data)
    os.remove(tmp_path / "t" / "checkpoint.pt")              # as in a fresh clone
    with pytest.raises(ValueError, match="finished run.*--overwrite=true"):
        train_lib.train(small_cfg(tmp_path, epochs=2), data=train_data)
