"""The teacher: a ViT-Small trained from scratch on CIFAR-10 at 32 px.

    python teacher.py                 # patch 4 (runs/teacher_small_p4/)
    python teacher.py --patch_size=2  # patch 2 (runs/teacher_small_p2/)
    python teacher.py --quick         # a small teacher in a few minutes on a CPU

The recipe follows the paper's: mixup (alpha 0.2) or cutmix
(alpha 1.0) on alternate batches at random, label smoothing 0.01, AdamW with
weight decay 2e-4, a warm-up + cosine schedule peaking at 4e-4, 135 epochs.
The notebooks configured crop + flip, AutoAugment and random erasing for it but applied
none of them (a shared-transform bug, which teacher_recipe="original" replays); here crop +
flip are on; TrivialAugment (one random op per image, data.trivial_augment) and random erasing
are there as switches (--randaug --erasing=0.25), off by default: measured on the CPU
protocol's teacher they cost 2.9 points (docs/reproducing.md, "Teacher recipe"); on
ViT-Small with all data they are untested.
Students find their teacher through ensure_teacher(): the cached checkpoint for
their patch size, trained on the spot when it does not exist yet. teacher_model="conv" is a
convolutional teacher instead (convnet.py), with its own recipe (CONV_RECIPE, 12 epochs):
experiments.py's study_kd_conv arms. teacher_flip=True distils from the teacher's logits
averaged over the view and its mirror image (FlipAveraged; the study_kd_convflip arms).
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

# OpenMP threads that busy-wait between parallel regions make two processes on a shared CPU
# slow each other down several-fold (docs/speed.md, "A shared machine"); waiting passively
# costs little on an idle one. Set before torch is imported; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

import convnet
import data as data_lib
import irkd
import runs
import train as train_lib
from train import RunConfig

QUICK_PRESET = "custom"  # the quick teacher: the custom size at 32 px, a few epochs
# the conv teacher's recipe (AdamW, warm-up + cosine); its epochs are the student's
# teacher_epochs, CONV_EPOCHS in experiments.py's study arms
CONV_RECIPE = dict(lr=2e-3, weight_decay=5e-2, label_smoothing=0.1)
CONV_EPOCHS = 12
# what a cached teacher must match: its augmentation and the split it validated on
RECIPE = ("augment", "mixup", "randaug", "erasing", "split")


class FlipAveraged(torch.nn.Module):
    """A teacher whose logits are the mean of its logits on the images and on their mirror
    images: the flip test-time augmentation airbench reports its accuracy with. A left-right
    flip keeps a CIFAR-10 label, so the average is a better teacher for twice its forward pass
    (the conv teacher: 87.14 % alone, 88.46 % averaged; docs/study.md)."""

    def __init__(self, teacher: torch.nn.Module):
        super().__init__()
        self.teacher = teacher

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        # both views in one batch: in eval mode batch norm treats each image alone
        logits = self.teacher(torch.cat([x, x.flip(3)]))       # (2B, C)
        return logits.view(2, B, -1).mean(0)                   # (B, C)


def teacher_config(patch_size: int = 4, *, quick: bool = False,
                   base: RunConfig | None = None) -> RunConfig:
    """The teacher recipe for a student config `base` (its teacher_model, teacher_epochs,
    data subset, outputs and device). The name says what differs from the paper's teacher,
    so that differently trained teachers are cached apart."""
    base = base or RunConfig()
    conv = base.teacher_model in convnet.CONV_PRESETS      # no patches: no patch size in its name
    name = f"teacher_{base.teacher_model}" + ("" if conv else f"_p{patch_size}")
    name += f"_{base.teacher_epochs}ep" if base.teacher_epochs != 135 else ""
    name += f"_{base.train_size}img" if base.train_size else ""
    name += "_nbsplit" if base.split == "notebooks" else ""   # validated on other images
    cfg = dataclasses.replace(
        base, name=name, model=base.teacher_model, patch_size=patch_size, kd=False, cl=False,
        sal=False, epochs=base.teacher_epochs, lr=4e-4, weight_decay=2e-4, schedule="onecycle",
        warmup_epochs=max(1, base.teacher_epochs // 13), label_smoothing=0.01, mixup=True,
        dropout=0.0, fresh_optimizer=True, teacher="", quick=quick, test_epochs=(),
        # nothing of the student's own protocol (its augmentation, selection, curriculum form),
        # and whole-batch steps: a cached teacher is the same whichever student asked for it
        augment="crop_flip", resize_mode="resize", select="last", patience=0, micro_batch=0,
        # nor the student's per-image extras (orig_tiny_p2_kd's erasing would otherwise train
        # the shared p2 teacher with erasing): the recipe's switches start off
        randaug=False, erasing=0.0, erasing_area=0.33,
        # nor the replays' switches of the student: a plain ViT, the default stopping
        arch="irkd", attn_dropout=0.0, reload_best=False, stage_epochs=(), stop_epoch=0)
    if conv and not quick:
        # the convnet's own recipe (docs/speed.md, "A convolutional teacher"): sized for ~30 min
        # of a 2-core CPU. Batch norm lets a convnet take a larger lr than a ViT; label
        # smoothing 0.1; no mixup / cutmix: at a dozen epochs they cost more than they give
        cfg = dataclasses.replace(cfg, **CONV_RECIPE, mixup=False)
    if base.teacher_recipe == "original":
        # the notebooks' patch-4 teacher (P_4_ALL): OneCycle with its peak at 60 % of the run,
        # dropout 0.1, and the best validation epoch's weights. No per-image augmentation, only
        # mixup/cutmix: P_4_ALL.ipynb cell 5 (SMALL_P_4_ALL.py, the cell at line 2437) builds
        # train_tf (crop, flip, AutoAugment, erasing) on `full`, random_splits `full`, then sets
        # `val_ds.dataset.transform = val_tf` (its line 107): the same object the train Subset reads
        # torch's OneCycleLR (div 20, final div 5, beta1 cycled) with its peak at 60 %; HF's
        # ViT with hidden and attention dropout 0.1 (notebooks.py, arch="notebook")
        cfg = dataclasses.replace(cfg, name=name + "_orig", dropout=0.1, select="best",
                                  schedule="onecycle_torch", arch="notebook", attn_dropout=0.1,
                                  warmup_epochs=round(0.6 * base.teacher_epochs), augment="none")
    if quick:
        # one small stand-in for either recipe (the same name, so the same cached file); of the
        # student's own size, cached under its own name, where the saliency reads the teacher's
        # blocks at the student's layers (probe: all 12 of ViT-Tiny) and the stand-in has fewer
        deep = (base.kd and base.sal and base.saliency == "probe" and base.model in irkd.PRESETS
                and irkd.PRESETS[base.model]["depth"] > irkd.PRESETS[QUICK_PRESET]["depth"])
        preset = base.model if deep else QUICK_PRESET
        name = f"teacher_quick_p{patch_size}" if preset == QUICK_PRESET else \
            f"teacher_quick_{preset}_p{patch_size}"
        cfg = dataclasses.replace(cfg, name=name, model=preset,
                                  **quick_sizes(preset, patch_size, epochs=8),
                                  warmup_epochs=1, mixup=False, randaug=False, erasing=0.0,
                                  lr=1e-3, dropout=0.0, augment="crop_flip", select="last",
                                  schedule="onecycle", arch="irkd", attn_dropout=0.0,
                                  split="project")
    return cfg


def quick_sizes(preset: str, patch_size: int, epochs: int) -> dict:
    """Quick-mode data sizes, scaled so that every preset / patch size takes about a minute
    of training on a 2-core CPU: cost per image grows with parameters times tokens."""
    tokens = (32 // patch_size) ** 2 + 2
    p = irkd.PRESETS[preset]
    cost = p["depth"] * p["dim"] ** 2 * tokens
    reference = 4 * 128 ** 2 * 66                 # custom, patch 4
    train = int(4000 * reference / cost / 128) * 128
    # Evaluation shrinks with the cost too (it was 70 % of a patch-2 quick run); the reference
    # (custom, patch 4) keeps 1,000 validation and 2,000 test images.
    scale = min(1.0, reference / cost)
    return dict(train_size=max(256, train), val_size=max(200, int(1000 * scale)),
                test_size=max(500, int(2000 * scale)), epochs=epochs)


def default_path(cfg: RunConfig) -> str:
    t = teacher_config(cfg.teacher_patch or cfg.patch_size, quick=cfg.quick, base=cfg)
    return os.path.join(t.out, t.name, "model.pt")


def estimate_seconds(cfg: RunConfig) -> float:
    """Time a few real training steps of this config on random data; scale to the whole run."""
    device = runs.pick_device(cfg.device)
    model = train_lib.make_model(cfg.model, patch_size=cfg.patch_size).to(device)
    opt = irkd.make_optimizer(model, cfg)
    x = torch.randn(cfg.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (cfg.batch_size,), device=device)
    times = []
    for _ in range(4):
        t0 = time.time()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.time() - t0)
    n_train = cfg.train_size or 45000
    return min(times[1:]) * (n_train // cfg.batch_size) * cfg.epochs


def train_teacher(cfg: RunConfig, data: dict | None = None) -> dict:
    """Announce the teacher run with its expected duration (measured, not guessed); train it."""
    patch = "" if cfg.model in convnet.CONV_PRESETS else f", patch {cfg.patch_size}"
    print(f"training {cfg.name} ({cfg.model}{patch}, {cfg.epochs} epochs): about "
          f"{estimate_seconds(cfg) / 60:.0f} min expected on "
          f"{runs.device_name(runs.pick_device(cfg.device))}", flush=True)
    return train_lib.train(cfg, data=data)


def ensure_teacher(cfg: RunConfig, data: dict | None = None):
    """The frozen teacher for a student config -> (model, info for config/results).

    cfg.teacher names a checkpoint; empty means the cached default for this patch
    size, trained first when missing. A checkpoint of another preset or patch size
    is refused: the student would silently distil from the wrong model.
    """
    patch = cfg.teacher_patch or cfg.patch_size                        # the teacher's own grid
    tcfg = teacher_config(patch, quick=cfg.quick, base=cfg)            # the recipe of the default
    path = cfg.teacher or default_path(cfg)
    expected = tcfg.model if cfg.quick and not cfg.teacher else cfg.teacher_model
    if not cfg.teacher:
        # one process trains a missing teacher; another that needs it waits for it, then loads it
        with runs.exclusive(os.path.dirname(path) + ".lock", f"training {tcfg.name}"):
            if not os.path.exists(path):
                print(f"no teacher at {path}: it is trained first", flush=True)
                train_teacher(tcfg, data)
    elif not os.path.exists(path):
        raise FileNotFoundError(f"--teacher={path}: no such file. Pass the model.pt of a trained "
                                f"teacher (runs/teacher_*/model.pt), or leave --teacher out to use "
                                f"the default teacher of this experiment, which is trained first "
                                f"when missing")
    model, ckpt = train_lib.load_model(path)
    args = ckpt["model_args"]
    if expected in convnet.CONV_PRESETS or args["preset"] in convnet.CONV_PRESETS:
        # a convnet has no patches: only the preset must match, whatever patch_size was saved
        if args["preset"] != expected:
            raise ValueError(
                f"teacher checkpoint {path} is a {args['preset']} model; this experiment needs "
                f"a {expected} teacher (pass --teacher=PATH of one, or --teacher_model="
                f"{args['preset']} to use this one)")
    elif args["preset"] != expected or args["patch_size"] != patch or args["distill_token"]:
        raise ValueError(
            f"teacher checkpoint {path} is a {args['preset']} model with patch {args['patch_size']}"
            f"{' and a distillation token' if args['distill_token'] else ''}; this experiment "
            f"needs a {expected} teacher with patch {patch} (train it with "
            f"`python teacher.py --patch_size={patch}` or pass --teacher=PATH and "
            f"--teacher_model=PRESET)")
    # a field the checkpoint's config lacks (written before it existed) had the default
    defaults = dataclasses.asdict(RunConfig())
    recipe = {k: ckpt.get("config", {}).get(k, defaults[k]) for k in RECIPE}
    if not cfg.teacher:  # the cached default must have today's recipe, not an older one
        want = {k: getattr(tcfg, k) for k in RECIPE}
        if recipe != want:
            raise ValueError(f"the cached teacher {path} was trained with {recipe}, but the "
                             f"teacher recipe is now {want}; move it away to train a new one, "
                             f"or pass --teacher={path} to use it")
    info = dict(path=runs.repo_relative(path), md5=data_lib.md5sum(path), preset=args["preset"],
                patch_size=args["patch_size"], test_acc=ckpt.get("test_acc"), **recipe)
    if cfg.teacher_flip:
        # the teacher the student reads, measured as the student will be: the (subset of the)
        # test set at 32 px, on the run's device
        device = runs.pick_device(cfg.device)
        model = FlipAveraged(model).to(device)
        d = data if data is not None else data_lib.load_cifar10(cfg.data)
        n = cfg.test_size or len(d["test_x"])                   # 0: all 10,000
        x, y = (d[k][:n].to(device) for k in ("test_x", "test_y"))
        info |= dict(flip=True, test_acc_flip=irkd.evaluate(model, x, y, 32)["cls"])
    return model, info


def main(argv: list[str]) -> int:
    try:
        overrides = runs.parse_overrides(argv, RunConfig)
        quick = overrides.pop("quick", False)
        out = overrides.pop("out", RunConfig.out)
        base = RunConfig(out=f"{out}/quick" if quick else out)  # where quick students look for it
        cfg = teacher_config(overrides.pop("patch_size", 4), quick=quick, base=base)
        cfg = dataclasses.replace(cfg, **overrides)
        cfg.check()                  # a bad number fails here, before the time estimate
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def go():
        r = train_teacher(cfg)
        print(f"{cfg.name}: test accuracy {r['test_acc']:.2f} % at 32 px -> "
              f"{os.path.join(cfg.out, cfg.name)}")
    return runs.guarded(go)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
