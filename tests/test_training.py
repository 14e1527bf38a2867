"""irkd.py sections 4-6: Config (check, stages), training (make_optimizer, lr_at, load_model,
train_step, train: the curriculum, the optimizer per stage, KD + saliency, teacher_res, the
files a run writes) and evaluation (evaluate, evaluate_all), plus an end-to-end "it must
learn" run on an easy synthetic task.

Oracles: the hand-chosen curriculum (2 stages x 1 epoch x 2 steps) fixes the log rows, the
checkpoint's step count and the AdamW step counters; the logged loss equals its logged parts
mixed by hand; the student's view resized (data.resize) is the teacher's full view; a saved
model reloaded reproduces the run's test accuracies; fixed logits worked by hand for the
heads and their softmax average, image by image; each replay's outcome (stages, loss terms,
selection, heads) written out by hand (REPLAY_OUTCOME); the kernel's own peak-memory reading
(/proc/self/status VmHWM) around a run whose first step lifts the peak by 64 MiB; chance
level (10 %) against > 60 % after training.
"""
import collections
import dataclasses
import json
import mmap
import os

import pytest
import torch
import torch.nn as nn

import data as data_lib
import saliency_variants
import train as train_lib
import experiments
import irkd
import runs
from conftest import make_data, read_log, small_cfg, tiny_vit, write_cifar

RESULT_KEYS = {"name", "test_acc", "test_acc_by_res", "heads", "params", "wall_s", "device"}
LOG_KEYS = {"res", "epoch", "lr", "loss", "ce", "kd", "sal", "train_acc", "val_acc", "seconds",
            "images_per_s"}


class RecordingTeacher(nn.Module):
    """A teacher that records every input it sees, through forward or (the rollout folded in
    as the forward goes) embed; otherwise the ViT it wraps."""

    def __init__(self, inner, events):
        super().__init__()
        self.inner, self.events = inner, events
        self.num_prefix, self.blocks = inner.num_prefix, inner.blocks

    def forward(self, x, return_attn=False):
        self.events.append(("teacher", x.detach().clone()))
        return self.inner(x, return_attn)

    def embed(self, x):
        self.events.append(("teacher", x.detach().clone()))
        return self.inner.embed(x)

    def classify(self, x):
        return self.inner.classify(x)


def record_student_inputs(monkeypatch, events):
    real = irkd.build_model

    def build(*a, **kw):
        model = real(*a, **kw)
        model.register_forward_pre_hook(
            lambda m, args: events.append(("student", args[0].detach().clone())))
        return model

    monkeypatch.setattr(irkd, "build_model", build)


def kd_teacher():
    torch.manual_seed(123)
    return tiny_vit(4)


@pytest.fixture(scope="module")
def curriculum_run(tmp_path_factory, train_data):
    """small_cfg trained once (plain CE, 8 then 16 px): (results, run directory)."""
    tmp_path = tmp_path_factory.mktemp("curriculum")
    return train_lib.train(small_cfg(tmp_path), data=train_data), tmp_path / "t"


@pytest.fixture(scope="module")
def kd_sal_run(tmp_path_factory, train_data):
    """small_cfg with KD and saliency, trained once: (results, run directory)."""
    tmp_path = tmp_path_factory.mktemp("kd_sal")
    cfg = small_cfg(tmp_path, kd=True, sal=True)
    return train_lib.train(cfg, teacher=kd_teacher(), data=train_data), tmp_path / "t"


# ----------------------------------------------------------------------------- Config

def test_config_check_rejects_non_divisible_resolutions():
    train_lib.RunConfig(patch_size=4, cl=True, resolutions=(12, 16, 20, 24, 28, 32), epochs=6).check()
    train_lib.RunConfig(patch_size=2, cl=True, resolutions=(12, 14), epochs=2).check()
    with pytest.raises(ValueError, match="patch_size=4"):
        train_lib.RunConfig(patch_size=4, cl=True, resolutions=(12, 18), epochs=2).check()
    with pytest.raises(ValueError, match="patch_size=2"):
        train_lib.RunConfig(patch_size=2, cl=True, resolutions=(12, 15), epochs=2).check()
    with pytest.raises(ValueError, match="epochs"):
        train_lib.RunConfig(cl=True, resolutions=(12, 16), epochs=3).check()
    with pytest.raises(ValueError, match="kd"):
        train_lib.RunConfig(sal=True, kd=False).check()


def test_config_stages():
    assert train_lib.RunConfig(cl=True, epochs=60).stages() == [(r, 10)
                                                        for r in (12, 16, 20, 24, 28, 32)]
    assert train_lib.RunConfig(cl=False, epochs=60).stages() == [(32, 60)]
    assert train_lib.RunConfig(cl=True, resolutions=(8, 16), epochs=4).stages() == [(8, 2), (16, 2)]


def test_check_rejects_bad_eval_resolution_without_cl():
    with pytest.raises(ValueError, match="patch_size"):
        train_lib.RunConfig(cl=False, patch_size=4, resolutions=(12, 18)).check()


# Oracle: the images the teacher sees. Mixup (soft labels) cannot go with kd, nor erasing when
# the teacher gets the 32-px view (it would not be erased); erasing is a probability.
@pytest.mark.parametrize("kw", [dict(mixup=True, kd=True),
                                dict(erasing=0.25, kd=True, teacher_res="full"),
                                dict(erasing=1.5), dict(erasing=-0.1)])
def test_check_rejects_recipe_extras_the_teacher_would_not_see(kw):
    with pytest.raises(ValueError, match="mixup|erasing"):
        train_lib.RunConfig(**kw).check()
    train_lib.RunConfig(randaug=True, erasing=1.0, mixup=True).check()       # without kd: fine
    train_lib.RunConfig(randaug=True, erasing=0.25, kd=True).check()         # the teacher sees them too


def test_compile_refuses_grad_saliency(tmp_path):
    cfg = small_cfg(tmp_path, kd=True, sal=True, saliency="grad", compile=True)
    with pytest.raises(ValueError, match="second-order"):
        cfg.check()


# ----------------------------------------------------------------------------- optimizer, schedule

def test_make_optimizer_groups():
    model = tiny_vit(4, distill_token=True)
    cfg = train_lib.RunConfig(lr=1e-3, weight_decay=0.05)
    opt = irkd.make_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW)
    decay, rest = opt.param_groups
    assert decay["weight_decay"] == 0.05 and rest["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    rest_names = {names[id(p)] for p in rest["params"]}
    assert {"cls_token", "dist_token", "pos_embed"} <= rest_names
    assert "blocks.0.attn.qkv.weight" in decay_names and "patch_embed.weight" in decay_names
    assert "head.weight" in decay_names and "head_dist.weight" in decay_names
    assert all(n.endswith("bias") or "norm" in n or n in {"cls_token", "dist_token", "pos_embed"}
               for n in rest_names)
    assert len(decay_names) + len(rest_names) == len(list(model.parameters()))
    assert all(g["lr"] == 1e-3 for g in opt.param_groups)


def test_lr_schedule():
    const = train_lib.RunConfig(lr=3e-4)
    assert all(train_lib.lr_at(const, s, 100, 10) == 3e-4 for s in (0, 50, 99))
    cyc = train_lib.RunConfig(lr=4e-4, schedule="onecycle")
    assert train_lib.lr_at(cyc, 0, 100, 10) == pytest.approx(4e-5)
    assert train_lib.lr_at(cyc, 9, 100, 10) == pytest.approx(4e-4)
    assert train_lib.lr_at(cyc, 10, 100, 10) == pytest.approx(4e-4)
    assert train_lib.lr_at(cyc, 55, 100, 10) == pytest.approx(2e-4)        # half way through the cosine
    assert train_lib.lr_at(cyc, 100, 100, 10) == pytest.approx(0.0, abs=1e-12)


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*model.pt of a trained run"):
        train_lib.load_model(str(tmp_path / "missing.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a model.pt written by this project"):
        train_lib.load_model(str(junk))


# ------------------------------------------------------------------------ curriculum and outputs

def test_curriculum_log_rows(curriculum_run):
    _, run_dir = curriculum_run
    rows = read_log(run_dir)
    assert [r["res"] for r in rows] == [8, 16]
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert LOG_KEYS <= set(r)
        assert r["kd"] == 0 and r["sal"] == 0 and r["loss"] > 0
        assert abs(r["loss"] - r["ce"]) < 1e-4               # plain CE run
        assert r["lr"] == pytest.approx(3e-4)


def test_curriculum_run_files_and_results(curriculum_run):
    results, run_dir = curriculum_run
    for f in ("config.json", "results.json", "model.pt", "checkpoint.pt", "log.jsonl"):
        assert (run_dir / f).exists(), f
    saved = json.load(open(run_dir / "results.json"))
    assert RESULT_KEYS <= set(saved)
    assert saved == json.loads(json.dumps(results))
    assert saved["name"] == "t"
    assert set(saved["test_acc_by_res"]) == {"8", "16", "32"}
    assert saved["test_acc"] == saved["test_acc_by_res"]["32"]
    assert set(saved["heads"]) == {"cls"}
    assert saved["params"] == irkd.count_params(irkd.build_model("custom", patch_size=4))
    assert saved["wall_s"] >= 0 and "cpu" in saved["device"]


def test_curriculum_run_config_and_checkpoint(curriculum_run):
    _, run_dir = curriculum_run
    config = json.load(open(run_dir / "config.json"))
    assert {f.name for f in dataclasses.fields(train_lib.RunConfig)} <= set(config)
    assert config["resolutions"] == [8, 16] and config["cl"] is True
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 2 and ckpt["step"] == 4    # 64 images / 32 = 2 steps per epoch
    assert {"model", "optimizer", "model_args", "config"} <= set(ckpt)


def test_saved_model_reloads_and_reproduces_test_acc(curriculum_run, train_data):
    results, run_dir = curriculum_run
    ckpt = torch.load(run_dir / "model.pt", weights_only=True)
    assert {"model", "model_args"} <= set(ckpt)
    assert ckpt["model_args"]["preset"] == "custom" and ckpt["model_args"]["patch_size"] == 4
    model, meta = train_lib.load_model(str(run_dir / "model.pt"))
    test_x, test_y = train_data["test_x"][:64], train_data["test_y"][:64]
    for res in (8, 16, 32):
        acc = irkd.evaluate(model, test_x, test_y, res)["cls"]
        assert acc == results["test_acc_by_res"][str(res)]


def count_optimizers(monkeypatch):
    """Make irkd.make_optimizer record every optimizer it builds; returns the list."""
    calls = []
    real = irkd.make_optimizer

    def counting(model, cfg):
        opt = real(model, cfg)
        calls.append(opt)
        return opt

    monkeypatch.setattr(irkd, "make_optimizer", counting)
    return calls


@pytest.mark.parametrize("fresh,expected_calls", [(True, 2), (False, 1)])
def test_optimizer_recreated_per_stage(tmp_path, train_data, monkeypatch, capsys, fresh,
                                       expected_calls):
    calls = count_optimizers(monkeypatch)
    cfg = small_cfg(tmp_path, epochs=4, fresh_optimizer=fresh)     # 2 stages x 2 epochs
    train_lib.train(cfg, data=train_data)
    assert len(calls) == expected_calls
    if fresh:
        assert calls[0] is not calls[1]
        # the second optimizer started from zero moments: after 2 epochs x 2 steps it has step 4
        steps = [s["step"].item() for s in calls[1].state.values()]
        assert steps and all(s == 4 for s in steps)
    else:
        steps = [s["step"].item() for s in calls[0].state.values()]
        assert steps and all(s == 8 for s in steps)


# ----------------------------------------------------------------------------- distillation runs

def test_kd_sal_run_log_rows(kd_sal_run):
    _, run_dir = kd_sal_run
    rows = read_log(run_dir)
    assert [r["res"] for r in rows] == [8, 16]
    for r in rows:
        assert r["kd"] > 0 and r["sal"] > 0
        # the logged loss is the mix of its logged parts (all are per-step means)
        want = 0.5 * r["ce"] + 0.5 * r["kd"] + 0.8 * r["sal"]
        assert abs(r["loss"] - want) < 1e-4 * max(1.0, want)
        assert set(r["val_heads"]) == {"cls", "dist", "avg"}


def test_kd_sal_run_results_and_heads(kd_sal_run):
    results, run_dir = kd_sal_run
    assert set(results["heads"]) == {"cls", "dist", "avg"}
    for h in ("cls", "dist", "avg"):
        assert set(results["heads"][h]) == {"8", "16", "32"}
    assert results["test_acc"] == results["heads"]["avg"]["32"]
    assert results["test_acc_by_res"] == results["heads"]["avg"]
    model, _ = train_lib.load_model(str(run_dir / "model.pt"))
    assert model.head_dist is not None


def test_kd_trains_the_dist_head(tmp_path, train_data, capsys):
    train_lib.train(small_cfg(tmp_path, kd=True), data=train_data, teacher=kd_teacher())
    model, _ = train_lib.load_model(str(tmp_path / "t" / "model.pt"))
    torch.manual_seed(0)
    fresh = irkd.build_model("custom", patch_size=4, distill_token=True)
    assert (model.head_dist.weight - fresh.head_dist.weight).abs().max() > 1e-4
    assert (model.dist_token - fresh.dist_token).abs().max() > 1e-5


def teacher_calls(events):
    """(student event, teacher event) for every teacher forward, with the event before it."""
    return [(events[i - 1], events[i]) for i in range(1, len(events))
            if events[i][0] == "teacher"]


def check_teacher_view(xs, xt, teacher_res):
    """The teacher's input given the student's xs, for teacher_res "full" or "same"."""
    if teacher_res == "full":
        assert xt.shape[-2:] == (32, 32)
        # both views come from one augmented image: the student's is the teacher's, resized
        torch.testing.assert_close(data_lib.resize(xt, xs.shape[-1]), xs, atol=1e-5, rtol=0)
    else:
        assert torch.equal(xt, xs)


@pytest.mark.parametrize("teacher_res", ["full", "same"])
def test_teacher_resolution(tmp_path, train_data, monkeypatch, capsys, teacher_res):
    events = []
    record_student_inputs(monkeypatch, events)
    teacher = RecordingTeacher(kd_teacher(), events)
    cfg = small_cfg(tmp_path, kd=True, sal=True, teacher_res=teacher_res)
    train_lib.train(cfg, teacher=teacher, data=train_data)
    pairs = teacher_calls(events)
    assert len(pairs) >= 4                                   # 2 stages x 2 steps (+ snapshots)
    seen = []
    for (who, xs), (_, xt) in pairs:
        assert who == "student"              # every teacher call follows a student forward
        seen.append((xs.shape[-1], xt.shape[-1]))
        check_teacher_view(xs, xt, teacher_res)
    assert sorted({s for s, _ in seen}) == [8, 16]
    assert {t for _, t in seen} == ({32} if teacher_res == "full" else {8, 16})


def test_kd_requires_teacher(tmp_path, train_data):
    with pytest.raises(ValueError, match="teacher"):
        train_lib.train(small_cfg(tmp_path, kd=True), data=train_data)


def test_non_cl_run_is_one_stage_at_32(tmp_path, train_data, capsys):
    cfg = small_cfg(tmp_path, cl=False, resolutions=(16, 32), epochs=2)
    train_lib.train(cfg, data=train_data)
    assert [r["res"] for r in read_log(tmp_path / "t")] == [32, 32]


def test_train_reads_cfg_data(tmp_path, capsys):
    # The whole path from files on disk: 5 x 1,010 images, 50 left for training after the
    # fixed 5,000-image validation split.
    root = tmp_path / "data"
    write_cifar(root, n_per_batch=1010, n_test=40)
    cfg = small_cfg(tmp_path, data=str(root), train_size=0, val_size=16, test_size=0, epochs=2)
    results = train_lib.train(cfg)
    assert results["train_images"] == 50 and results["test_images"] == 40
    assert len(read_log(tmp_path / "t")) == 2


# ----------------------------------------------------------------------------- evaluation

class FixedLogits(nn.Module):
    """Returns stored (cls, dist) logits for the batch, whatever the image."""

    def __init__(self, cls, dist):
        super().__init__()
        self.cls, self.dist, self.seen = cls, dist, []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        i = sum(s[0] for s in self.seen[:-1])
        return self.cls[i:i + len(x)], self.dist[i:i + len(x)]


# Oracle: six images worked by hand, softmax values to 3 digits (labels 0, 1, 2, 2, 0, 0):
#   0: cls (2, 1.9, 0) says 0 (barely); dist (0, 9, 0) says 1 -> p sums (.490, 1.443, .066): 1
#   1: both (0, 5, 0) say 1
#   2: cls (1, 0, 0) says 0; dist (0, 0, 3) says 2 -> (.622, .257, 1.122): 2
#   3: cls (0, 0, 4) says 2; dist (0, 1, 0) says 1 -> (.230, .594, 1.176): 2
#   4: cls (4, 0, 0) says 0; dist (-10, 1, 0) says 1 -> (.964, .749, .287): 0, where the mean
#      of the logits (-3, .5, 0) would say 1: avg sums probabilities
#   5: cls (0, 3, 0) says 1; dist (5, 0, 0) says 0 -> (1.032, .916, .052): 0
# cls right on 0, 1, 3, 4 (66.67 %); dist on 1, 2, 5 (50.00 %); avg on 1..5 (83.33 %).
EVAL_CLS = [[2.0, 1.9, 0.0], [0.0, 5.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 4.0], [4.0, 0.0, 0.0],
            [0.0, 3.0, 0.0]]
EVAL_DIST = [[0.0, 9.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 3.0], [0.0, 1.0, 0.0],
             [-10.0, 1.0, 0.0], [5.0, 0.0, 0.0]]


def test_evaluate_heads_and_average():
    cls, dist = torch.tensor(EVAL_CLS), torch.tensor(EVAL_DIST)
    x = torch.zeros(6, 3, 32, 32, dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 2, 0, 0])
    preds = irkd.predict(FixedLogits(cls, dist), x, 16, batch_size=4)
    assert preds["cls"].tolist() == [0, 1, 0, 2, 0, 1]
    assert preds["dist"].tolist() == [1, 1, 2, 1, 1, 0]
    assert preds["avg"].tolist() == [1, 1, 2, 2, 0, 0]
    model = FixedLogits(cls, dist).train()
    acc = irkd.evaluate(model, x, y, 16, batch_size=4)
    assert acc == {"cls": 66.67, "dist": 50.0, "avg": 83.33}
    assert model.training                                     # mode restored
    assert model.seen == [(4, 3, 16, 16), (2, 3, 16, 16)]     # batched, resized to res


def test_evaluate_all_every_resolution():
    torch.manual_seed(0)
    model = tiny_vit(4)
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (6,))
    out = irkd.evaluate_all(model, x, y, (12, 16))
    assert set(out) == {"cls"} and set(out["cls"]) == {"12", "16", "32"}
    out = irkd.evaluate_all(model, x, y)
    assert list(out["cls"]) == ["12", "16", "20", "24", "28", "32"]
    for r in (12, 20, 32):
        assert out["cls"][str(r)] == irkd.evaluate(model, x, y, r)["cls"]


# ----------------------------------------------------------------------------- it must learn

def test_learns_easy_task(tmp_path, capsys):
    data = make_data(5000 + 256, 200, kind="easy", seed=7)
    cfg = train_lib.RunConfig(name="learn", model="custom", cl=True, resolutions=(16, 32), epochs=2,
                      batch_size=32, lr=1e-3, train_size=256, val_size=64, test_size=200,
                      out=str(tmp_path), device="cpu", seed=0)
    torch.manual_seed(0)
    fresh = irkd.build_model("custom", patch_size=4)
    untrained = irkd.evaluate(fresh, data["test_x"], data["test_y"], 32)
    assert untrained["cls"] < 35                              # chance is 10 %
    results = train_lib.train(cfg, data=data)
    assert results["test_acc"] > 60, results
    assert results["test_acc_by_res"]["16"] > 60, results


# Oracle: the log. select="best" reports the weights of the epoch with the best 32-px
# validation accuracy; test_epochs adds that epoch's test accuracy and its predictions.
def test_best_validation_epoch_and_test_epochs(tmp_path, train_data):
    cfg = small_cfg(tmp_path, epochs=4, select="best", test_epochs=(1, 3))
    r = train_lib.train(cfg, data=train_data)
    rows = read_log(os.path.join(tmp_path, "t"))
    best = max(rows, key=lambda row: row["val_acc_32"])     # the first maximum wins ties
    assert r["best_epoch"] == best["epoch"] and r["select"] == "best"
    assert r["heads"] == r["heads_best"] and set(r["at_epoch"]) == {"1", "3"}
    preds = json.load(open(os.path.join(tmp_path, "t", "predictions.json")))
    assert {"epoch_1", "epoch_3", "last", "best", "labels"} <= set(preds)
    hits = sum(p == y for p, y in zip(preds["epoch_3"]["cls"], preds["labels"]))
    assert 100 * hits / len(preds["labels"]) == pytest.approx(r["at_epoch"]["3"]["cls"], abs=0.01)


def test_head_cls_reports_the_class_token(tmp_path, train_data):
    teacher = tiny_vit(patch_size=4)
    r = train_lib.train(small_cfg(tmp_path, kd=True, head="cls"), teacher=teacher, data=train_data)
    assert r["test_head"] == "cls" and r["test_acc"] == r["heads"]["cls"]["32"]


def test_bad_study_fields_are_refused():
    for bad in (dict(augment="autoaug"), dict(head="dist"), dict(select="first"),
                dict(test_epochs=(0,))):
        with pytest.raises(ValueError, match="valid|epoch in"):
            train_lib.RunConfig(**bad).check()


# Every replay of the notebooks runs (its switches together: no augmentation, early stopping,
# the cropping curriculum, probe / attn saliency, AutoAugment + erasing with KD, dropout), here
# on a custom-size student and teacher, two small epochs and a few synthetic images to stay fast.
# Oracle: what each replay must report, written out by hand from docs/reproducing.md's table
# (name -> curriculum, distillation, saliency term, selection): CE cells keep the best
# validation epoch, CL cells the best of the last stage, the others the last; a CL run logs 8 then 16 px, any other 32 px twice;
# a KD run has the three heads and a KD term, a Sal run a saliency term too; the logged loss is
# (1 - 0.5) CE + 0.5 KD + 0.8 Sal; the reported number is the cls head at 32 px of the selected
# weights, i.e. the share of predictions.json's digits that match the labels.
REPLAY_OUTCOME = {
    "orig_custom_p2_ce": (False, False, False, "best"),
    "orig_custom_p2_cl": (True, False, False, "last_stage_best"),
    "orig_custom_p2_kd": (False, True, False, "last"),
    "orig_custom_p2_kd_cl": (True, True, False, "last"),
    "orig_custom_p2_kd_cl_sal": (True, True, True, "last"),
    "orig_tiny_p2_kd": (False, True, False, "last"),
    "orig_tiny_p2_kd_cl": (True, True, False, "last"),
    "orig_tiny_p2_kd_cl_sal": (True, True, True, "last"),
    "orig_tiny_p4_ce": (False, False, False, "best"),
    "orig_tiny_p4_cl": (True, False, False, "last_stage_best"),
    "orig_tiny_p4_cl_md": (True, False, False, "last_stage_best"),
    "orig_tiny_p4_kd": (False, True, False, "last"),
    "orig_tiny_p4_kd_cl": (True, True, False, "last"),
    "orig_tiny_p4_kd_cl_sal": (True, True, True, "last"),
}


def test_the_replay_outcome_table_covers_every_replay():
    assert set(REPLAY_OUTCOME) == set(experiments.REPLAY)


@pytest.mark.parametrize("name", sorted(REPLAY_OUTCOME))
def test_every_replay_runs(name, tmp_path, train_data):
    cl, kd, sal, select = REPLAY_OUTCOME[name]
    (cfg,) = experiments.configs_for(name, {"quick": True, "out": str(tmp_path), "device": "cpu"})
    cfg = dataclasses.replace(cfg, model="custom", resolutions=(8, 16), epochs=2, batch_size=32,
                              train_size=64, val_size=32, test_size=32, stop_epoch=0)
    cfg.check()
    teacher = irkd.build_model("custom", patch_size=cfg.patch_size) if cfg.kd else None
    r = train_lib.train(cfg, teacher=teacher, data=train_data)
    rows = read_log(tmp_path / "quick" / name)
    assert [row["res"] for row in rows] == ([8, 16] if cl else [32, 32])
    for row in rows:
        assert (row["kd"] > 0) == kd and (row["sal"] > 0) == sal, row
        want = (0.5 * row["ce"] + 0.5 * row["kd"] + 0.8 * row["sal"]) if kd else row["ce"]
        assert abs(row["loss"] - want) < 1e-4 * max(1.0, want), row
    assert set(r["heads"]) == ({"cls", "dist", "avg"} if kd else {"cls"})
    assert r["select"] == select
    assert r["heads"] == r["heads_last" if select == "last" else "heads_best"]
    assert r["test_head"] == "cls" and r["test_acc"] == r["heads"]["cls"]["32"]
    preds = json.load(open(tmp_path / "quick" / name / "predictions.json"))
    which = "last" if select == "last" else "best"
    hits = sum(p == t for p, t in zip(preds[which]["cls"], preds["labels"]))
    assert len(preds["labels"]) == 32
    assert r["test_acc"] == pytest.approx(100 * hits / 32, abs=0.006)   # to 0.01


def vm_hwm_mib():
    """The kernel's own peak resident size of this process (/proc/self/status VmHWM, kB) in MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def vm_rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


# Oracle: the kernel's reading of the same quantity (VmHWM), in MiB as documented. The first
# step touches a buffer that lifts this process's resident size 64 MiB above its peak so far,
# so the recorded peak must be read after training began (>= the old peak + 64 MiB) and no
# later than the run's end (<= the peak after it); kB or bytes instead of MiB would be 1024x off.
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux /proc only")
def test_results_report_peak_memory(tmp_path, train_data, monkeypatch):
    real_step, lifted = irkd.train_step, []

    def step_with_a_bump(*a, **kw):
        if not lifted:
            # fresh pages from the kernel (an anonymous map, not the heap, which may hold
            # freed memory that is resident already), each written once
            size = int((vm_hwm_mib() - vm_rss_mib() + 64) * 2**20)
            with mmap.mmap(-1, size) as buf:
                for i in range(0, size, mmap.PAGESIZE):
                    buf[i] = 1
                lifted.append(vm_rss_mib())
        return real_step(*a, **kw)

    monkeypatch.setattr(irkd, "train_step", step_with_a_bump)
    before = vm_hwm_mib()
    results = train_lib.train(small_cfg(tmp_path), data=train_data)
    after = vm_hwm_mib()
    peak = results["peak_memory_mib"]
    assert set(peak) == {"rss"}                                   # "cuda" on CUDA only
    assert after >= before + 63                                   # the bump happened
    assert before + 63 <= peak["rss"] <= after + 0.1              # rounded to 0.1 MiB
    assert json.load(open(tmp_path / "t" / "results.json"))["peak_memory_mib"] == peak


# Oracle: the same run without checkpointing. Recomputing every block in backward (with the
# dropout draws replayed) must give the same weights, bit for bit, with rollout saliency too.
def test_checkpointed_blocks_train_to_the_same_weights(tmp_path, train_data):
    teacher = tiny_vit(patch_size=4)
    runs_ = {}
    for ckpt in (False, True):
        cfg = small_cfg(tmp_path / str(ckpt), kd=True, sal=True, dropout=0.1, checkpoint=ckpt)
        runs_[ckpt] = train_lib.train(cfg, teacher=teacher, data=train_data)
    assert runs_[True]["heads"] == runs_[False]["heads"]
    a, b = (torch.load(tmp_path / str(c) / "t" / "model.pt", weights_only=True)["model"]
            for c in (False, True))
    assert all(torch.equal(a[k], b[k]) for k in a)


# saliency.pt holds 8 images and small maps: not the test tensor the images were sliced from,
# nor the (B, N, N) flow a map is a view of.
def test_saliency_file_holds_only_its_own_images_and_maps(curriculum_run):
    _, run_dir = curriculum_run
    snap = torch.load(os.path.join(run_dir, "saliency.pt"), weights_only=False)
    assert snap["images"].untyped_storage().nbytes() == 8 * 3 * 32 * 32
    for stage in snap["stages"]:
        assert stage["student"].untyped_storage().nbytes() == stage["student"].numel() * 4
    assert os.path.getsize(os.path.join(run_dir, "saliency.pt")) < 64 * 1024


# Oracle: the whole batch in one step. Chunks of 5 out of 11 images (5 + 5 + 1), each loss
# weighted by its share, must give the same summed gradient (SGD with lr 1 makes the weight
# change the gradient itself) and the same logged means and correct count, for plain CE, KD
# and every saliency method (each of their terms is a mean over images).
@pytest.mark.parametrize("setup", ["ce", "kd"] + [f"sal_{s}" for s in tuple(saliency_variants.METHODS)])
def test_micro_batches_sum_to_the_whole_batch_step(setup):
    torch.manual_seed(0)
    teacher = None if setup == "ce" else tiny_vit(4)
    loss_fn = irkd.IRKDLoss(teacher, gamma=0.8 if setup.startswith("sal") else 0.0,
                            saliency=saliency_variants.METHODS[setup.split("_")[-1]]()
                            if setup.startswith("sal") else None, student_depth=2)
    x, y = torch.randn(11, 3, 16, 16), torch.randint(0, 10, (11,))
    after, stats = [], []
    for micro in (0, 5):
        torch.manual_seed(1)
        student = tiny_vit(4, distill_token=teacher is not None)
        opt = torch.optim.SGD(student.parameters(), lr=1.0)
        stats.append(irkd.train_step(student, loss_fn, opt, x, y, labels=y, teacher_input=x,
                                     lr=1.0, micro_batch=micro))
        after.append(dict(student.named_parameters()))
    torch.testing.assert_close(stats[1], stats[0], rtol=1e-5, atol=1e-6)
    for k in after[0]:
        torch.testing.assert_close(after[1][k], after[0][k], rtol=1e-5, atol=1e-6)
    assert stats[0][4] == (stats[0][4].round())  # the correct count stays a count


def test_micro_batch_must_not_be_negative():
    with pytest.raises(ValueError, match="micro_batch"):
        train_lib.RunConfig(micro_batch=-1).check()


# micro_batch=0 is the plain step: a run with micro_batch larger than the batch (one chunk)
# trains to the same weights, bit for bit.
def test_one_chunk_is_the_plain_step(tmp_path, train_data):
    teacher = tiny_vit(patch_size=4)
    for micro in (0, 1000):
        cfg = small_cfg(tmp_path / str(micro), kd=True, sal=True, micro_batch=micro)
        train_lib.train(cfg, teacher=teacher, data=train_data)
    a, b = (torch.load(tmp_path / str(m) / "t" / "model.pt", weights_only=True)["model"]
            for m in (0, 1000))
    assert all(torch.equal(a[k], b[k]) for k in a)


# Evaluation batches are sized by tokens: 500 images up to 66 tokens, 33,000 // tokens above
# (a patch-2 model at 32 px: 257 tokens -> 128 images), with the same predictions as any batch.
def test_predict_sizes_its_batches_by_tokens():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8)
    for patch, res, calls in ((2, 32, 3), (4, 32, 1), (2, 16, 1)):
        model, seen = tiny_vit(patch), []
        model.register_forward_pre_hook(lambda m, args: seen.append(len(args[0])))
        preds = irkd.predict(model, x, res)
        assert len(seen) == calls, (patch, res, seen)
        assert torch.equal(preds["cls"], irkd.predict(model, x, res, batch_size=7)["cls"])


# Oracle: a torch.compile backend that counts every call of the graphs it compiled, labelled by
# the module that was compiled. With saliency on, the teacher's forward that runs (its logits
# and its folded rollout, irkd.TeacherWithMap) must be a compiled graph at every step, not a
# compiled wrapper beside an eager forward (compiling the teacher alone counts 0 here).
def test_compile_runs_the_compiled_teacher_with_saliency(tmp_path, monkeypatch, train_data):
    calls = collections.Counter()

    def counting_compile(module, device, backend="inductor"):
        label = type(module).__name__

        def backend_fn(gm, example_inputs):
            def run(*args):
                calls[label] += 1
                return gm.forward(*args)
            return run
        return torch.compile(module, backend=backend_fn, dynamic=False)

    monkeypatch.setattr(runs, "compile_model", counting_compile)
    torch._dynamo.reset()
    cfg = small_cfg(tmp_path, kd=True, sal=True, compile=True)
    train_lib.train(cfg, teacher=irkd.build_model("custom", patch_size=4), data=train_data)
    steps = 2 * 2                                   # 2 epochs of 2 steps
    assert calls["TeacherWithMap"] >= steps, calls
    assert calls["ViT"] >= steps, calls


# -----------------------------------------------------------------------------
# The notebooks' stopping rules, on a scripted validation sequence. Oracle: the notebooks'
# loops (P_2_OUR_STUDENT cells 3, 8, 17; P_4_ALL cells 3, 11, 14) worked by hand on the
# script: `if val > best: save; no_imp = 0 else no_imp += 1; if no_imp >= patience: [reload
# the stage's best;] break`, the CL cells then testing the best of the 32-px stage.
# -----------------------------------------------------------------------------

def flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


def scripted_run(monkeypatch, tmp_path, train_data, script, **kw):
    """Train with validate() replaced by the script (one accuracy per trained epoch) ->
    (results, {epoch: weights after it}, [weights before each epoch's first step], log rows)."""
    vals, after, before, steps = iter(script), {}, [], [0]

    def validate(model, d, res, cfg, test=False):
        v = next(vals)
        after[len(after) + 1] = flat(model)
        return dict(select_val=v, test_predictions=None, val_acc=v, val_heads={"cls": v},
                    val_acc_32=v, val_heads_32={"cls": v}, test_heads_32=None)
    real_step = irkd.train_step

    def step(model, *a, **k):
        if steps[0] % 2 == 0:                        # 64 images, batch 32: two steps an epoch
            before.append(flat(model))
        steps[0] += 1
        return real_step(model, *a, **k)
    monkeypatch.setattr(train_lib, "validate", validate)
    monkeypatch.setattr(irkd, "train_step", step)
    cfg = small_cfg(tmp_path, **kw)
    r = train_lib.train(cfg, data=train_data)
    model, _ = train_lib.load_model(str(tmp_path / "t" / "model.pt"))
    return r, after, before, read_log(tmp_path / "t"), flat(model)


def test_cl_rule_reloads_the_stage_best_and_tests_the_last_stage_best(
        tmp_path, train_data, monkeypatch, capsys):
    # stage 0 (8 px, epochs 1-5): best 50 at epoch 1, no better in 2, 3, 4: stops after epoch 4;
    # stage 1 (16 px, epochs 6-10): best 60 at epoch 7, none better in 8-10: stops after 10
    script = [50, 40, 30, 20, 10, 60, 20, 30, 40]
    r, after, before, rows, saved = scripted_run(
        monkeypatch, tmp_path, train_data, script, epochs=10, patience=3, reload_best=True,
        select="last_stage_best")
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    # the trained epochs are numbered 1..9 in `after`: epoch 1 is the first, 7 is the 6th
    assert torch.equal(before[4], after[1])          # stage 1 starts from stage 0's best
    assert torch.equal(saved, after[6])              # the last stage's best, reloaded at the end
    assert r["selected_epoch"] == 7 and r["heads"] == r["heads_best"]


def test_patience_without_reload_carries_the_last_weights(tmp_path, train_data, monkeypatch,
                                                          capsys):
    script = [50, 40, 30, 20, 10, 60, 20, 30, 40]
    r, after, before, rows, saved = scripted_run(monkeypatch, tmp_path, train_data, script,
                                                 epochs=10, patience=3)
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert torch.equal(before[4], after[4])          # the stage's last trained weights go on
    assert torch.equal(saved, after[9]) and r["selected_epoch"] == 10
    assert r["heads"] == r["heads_last"]


def test_best_selection_without_patience_runs_every_epoch(tmp_path, train_data, monkeypatch,
                                                          capsys):
    # the CE cells: all epochs, the best validation epoch's weights tested (not reloaded)
    script = [10, 70, 20, 30, 40, 50]
    r, after, _, rows, saved = scripted_run(monkeypatch, tmp_path, train_data, script, cl=False,
                                            resolutions=(16, 32), epochs=6, select="best")
    assert len(rows) == 6 and r["selected_epoch"] == 2 and r["heads"] == r["heads_best"]
    assert torch.equal(saved, after[6])              # model.pt: the last weights


def test_stop_epoch_and_uneven_stages(tmp_path, train_data, capsys):
    cfg = small_cfg(tmp_path, epochs=3, stage_epochs=(1, 2), stop_epoch=2)
    assert cfg.stages() == [(8, 1), (16, 2)]
    train_lib.train(cfg, data=train_data)
    assert [(row["res"], row["epoch"]) for row in read_log(tmp_path / "t")] == [(8, 1), (16, 2)]


@pytest.mark.parametrize("kw, message", [
    (dict(stage_epochs=(1, 2)), "stage_epochs"),                   # sums to 3, not 2
    (dict(stage_epochs=(1, 1), cl=False), "stage_epochs"),
    (dict(reload_best=True), "patience"),
    (dict(stop_epoch=3), "stop_epoch"),
    (dict(attn_dropout=0.1), "attn_dropout"),
])
def test_the_replay_switches_are_checked(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        small_cfg(tmp_path, **kw).check()


# Oracle: torch's own scheduler, stepped as the notebook steps it (once per optimiser step).
def test_onecycle_torch_is_torchs_onecycle():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=4e-4)
    total = 135
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-4, total_steps=total,
                                                pct_start=0.6, anneal_strategy="cos",
                                                div_factor=20.0, final_div_factor=5)
    for step in range(total):
        lr, beta1 = train_lib.onecycle_torch_at(step, total, 4e-4, 0.6)
        group = opt.param_groups[0]
        assert lr == pytest.approx(group["lr"], rel=1e-12, abs=1e-15), step
        assert beta1 == pytest.approx(group["betas"][0], rel=1e-12), step
        opt.step()
        sched.step()
    cfg = train_lib.RunConfig(schedule="onecycle_torch", lr=4e-4)
    assert train_lib.lr_at(cfg, 0, 100, 60) == pytest.approx(2e-5)
    assert train_lib.lr_at(cfg, 59, 100, 60) == pytest.approx(4e-4)
    assert train_lib.lr_at(cfg, 99, 100, 60) == pytest.approx(4e-6)


def test_onecycle_torch_cycles_adamw_beta1_in_a_run(tmp_path, train_data, capsys):
    cfg = small_cfg(tmp_path, schedule="onecycle_torch", warmup_epochs=1, lr=1e-3)
    train_lib.train(cfg, data=train_data)
    ckpt = torch.load(tmp_path / "t" / "checkpoint.pt", weights_only=False)
    # 4 steps, peak at step 1: the last step (3) is the end of the cycle, beta1 back at 0.95
    assert ckpt["optimizer"]["param_groups"][0]["betas"][0] == pytest.approx(0.95)
    assert [row["lr"] for row in read_log(tmp_path / "t")] == pytest.approx(
        [train_lib.onecycle_torch_at(s, 4, 1e-3, 0.5)[0] for s in (1, 3)])


# Oracle: the uninterrupted run. Stopped at the first step after a stage that patience ended
# (its best not yet reloaded), the resumed run must reload it from checkpoint.pt and end with
# the same weights, bit for bit.
def test_cl_rule_resumes_at_the_stage_boundary(tmp_path, train_data, monkeypatch, capsys):
    script = [50, 40, 30, 20, 10, 60, 20, 30, 40]      # as above: stage 0 stops after epoch 4

    def scripted(values):
        vals = iter(values)

        def validate(model, d, res, cfg, test=False):
            v = next(vals)
            return dict(select_val=v, test_predictions=None, val_acc=v, val_heads={"cls": v},
                        val_acc_32=v, val_heads_32={"cls": v}, test_heads_32=None)
        return validate
    kw = dict(epochs=10, patience=3, reload_best=True, select="last_stage_best")
    monkeypatch.setattr(train_lib, "validate", scripted(script))
    train_lib.train(small_cfg(tmp_path / "full", **kw), data=train_data)
    real, calls = irkd.train_step, [0]

    def interrupted(*a, **k):
        calls[0] += 1
        if calls[0] == 9:                                # epoch 6's first step (2 per epoch)
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(train_lib, "validate", scripted(script))   # one script for both starts
    monkeypatch.setattr(irkd, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_lib.train(small_cfg(tmp_path / "cut", **kw), data=train_data)
    monkeypatch.setattr(irkd, "train_step", real)
    r = train_lib.train(small_cfg(tmp_path / "cut", **kw), data=train_data)
    assert "after epoch 4/10" in capsys.readouterr().out
    a = torch.load(tmp_path / "full" / "t" / "model.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "t" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a) and r["selected_epoch"] == 7
