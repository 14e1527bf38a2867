"""compile=True: the compiled step model trains the same weights as eager, saves through the
eager module, and is refused where it cannot work. Inductor's C++ code generation takes
minutes on a small CPU, so the tests compile with the "aot_eager" backend: the same dynamo
capture and AOT-autograd graphs per resolution, without code generation."""
import dataclasses

import pytest
import torch

import irkd
import runs
from test_model import tiny_vit
from test_training import small_cfg


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
    eager = irkd.train(cfg, teacher=teacher, data=train_data)
    compiled = irkd.train(dataclasses.replace(cfg, out=str(tmp_path / "compiled"), compile=True),
                          teacher=teacher, data=train_data)
    assert len(aot_eager) == 2                       # the student and the teacher
    assert compiled["test_acc_by_res"].keys() == eager["test_acc_by_res"].keys()
    for h in eager["heads"]:
        for r in eager["heads"][h]:
            assert compiled["heads"][h][r] == pytest.approx(eager["heads"][h][r], abs=1.0)  # % points
    a = torch.load(tmp_path / "eager" / "t" / "model.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "compiled" / "t" / "model.pt", weights_only=False)["model"]
    assert a.keys() == b.keys()                      # saved through the eager module: no "_orig_mod."
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=1e-4)


# Oracle: the uninterrupted eager run. A run interrupted in eager mode continues compiled.
def test_eager_run_resumes_compiled(tmp_path, train_data, aot_eager, monkeypatch, capsys):
    cfg = small_cfg(tmp_path / "whole")
    whole = irkd.train(cfg, data=train_data)
    real_step, calls = irkd.train_step, []

    def interrupted(*a, **kw):
        calls.append(1)
        if len(calls) == 3:                          # the first step of epoch 2 (two steps per epoch)
            raise KeyboardInterrupt
        return real_step(*a, **kw)

    monkeypatch.setattr(irkd, "train_step", interrupted)
    part = dataclasses.replace(cfg, out=str(tmp_path / "part"))
    with pytest.raises(KeyboardInterrupt):
        irkd.train(part, data=train_data)
    monkeypatch.setattr(irkd, "train_step", real_step)
    resumed = irkd.train(dataclasses.replace(part, compile=True), data=train_data)
    assert "after epoch 1/2" in capsys.readouterr().out
    assert len(aot_eager) == 1
    for r, acc in whole["test_acc_by_res"].items():
        assert resumed["test_acc_by_res"][r] == pytest.approx(acc, abs=1.0)


def test_compile_refuses_grad_saliency(tmp_path):
    cfg = small_cfg(tmp_path, kd=True, sal=True, saliency="grad", compile=True)
    with pytest.raises(ValueError, match="second-order"):
        cfg.check()
