"""The training loop: irkd's method on CIFAR-10, with the data (data.py) and a run's
bookkeeping (runs.py) around it.

    RunConfig   irkd.Config (the method) + the teacher's recipe and the original's switches
                (Recipe) + where and how it runs (runs.RunOptions); every field checked
    build       the student, its loss (IRKDLoss with the teacher) and what is compiled
    train       the resolution curriculum, epoch by epoch, then the test at every resolution

experiments.py and teacher.py call train(); the loop itself is a few short blocks, each opened
by a comment, with the points that wait for the device labelled "sync point".
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from tqdm import tqdm

import convnet
import data as data_lib
import irkd
import notebooks
import runs
from irkd import spec
from saliency_variants import METHODS

# every model a run can build: irkd's ViT presets, then the convnet's (teachers only)
MODELS = tuple(irkd.PRESETS) + tuple(convnet.CONV_PRESETS)


@dataclass
class Recipe:
    """How a model is trained beyond the method. The teacher's recipe (teacher.py sets it for
    the teachers it trains; students keep the defaults) and which teacher a student reads, then
    the switches that replay the original notebooks (experiments.py's orig_* cells)."""
    # the teacher's recipe: a warm-up + cosine schedule, label smoothing, mixup / cutmix,
    # TrivialAugment and random erasing
    # "onecycle": a linear warm-up then cosine to 0 (this project's teachers); "onecycle_torch":
    # torch's OneCycleLR (cosine up and down, beta1 cycled), as the notebooks' p4 teacher ran
    schedule: str = spec("constant", ("constant", "onecycle", "onecycle_torch"))
    warmup_epochs: int = spec(0, "[0, inf)")
    label_smoothing: float = spec(0.0, "[0, 1)")
    mixup: bool = False                # mixup / cutmix, half the batches each
    randaug: bool = False              # TrivialAugment: one random op per image
    erasing: float = spec(0.0, "[0, 1]")        # random-erasing probability per image
    # which teacher a student distils from
    teacher: str = ""                  # checkpoint path; empty = the cached default teacher
    teacher_model: str = spec("small", MODELS)
    teacher_patch: int = spec(0, "[0, 32]")      # 0 = the student's
    teacher_recipe: str = spec("default", ("default", "original"))  # "original": the notebooks'
    teacher_epochs: int = spec(135, "[1, inf)")
    # the teacher's logits averaged over the view and its mirror image (test-time flip, as
    # airbench tests its nets): a stronger teacher for twice its forward pass (teacher.py)
    teacher_flip: bool = False
    # the original notebooks' protocol
    resize_mode: str = spec("resize", ("resize", "crop"))     # "crop": the original curriculum
    augment: str = spec("crop_flip", ("crop_flip", "crop_flip_aa", "none"))  # _aa: AutoAugment
    loss_form: str = spec("convex", ("convex", "paper"))      # "paper": CE + alpha KD
    saliency: str = spec("rollout", tuple(METHODS))           # saliency_variants.METHODS
    head: str = spec("avg", ("avg", "cls"))   # the reported head: the two heads' mean, or cls
    # the tested weights: the last epoch's, the best validation epoch's (32 px), or the best of
    # the last stage by its own validation (the notebooks' CL cells)
    select: str = spec("last", ("last", "best", "last_stage_best"))
    # > 0: end a stage after this many epochs without a better validation accuracy (at the
    # stage's resolution); with reload_best the next stage starts from that stage's best weights
    patience: int = spec(0, "[0, inf)")
    reload_best: bool = False
    stage_epochs: tuple = ()           # epochs per stage instead of the equal split; sum = epochs
    stop_epoch: int = spec(0, "[0, inf)")     # > 0: stop after this many epochs (a run cut short)
    split: str = spec("project", ("project", "notebooks"))   # data.split_train_val
    erasing_area: float = spec(0.33, "(0.02, 1]")  # the largest erased share of an image
    # "notebook": the notebooks' students (notebooks.py): HF's ViT (its dropout places, its own
    # attention dropout) and, with kd, their wrapper (no final norm, a zero dist token, no
    # position row)
    arch: str = spec("irkd", ("irkd", "notebook"))
    attn_dropout: float = spec(0.0, "[0, 1)")


@dataclass
class RunConfig(runs.RunOptions, Recipe, irkd.Config):
    """Everything one run needs: the method's fields first, then the recipe, then the run's."""
    # irkd.Config's model, with the convnet as a further choice (a teacher's own run); the
    # field keeps its place among the method's fields
    model: str = spec("custom", MODELS)

    def stages(self) -> list[tuple[int, int]]:
        """irkd.Config's stages, or with stage_epochs the notebooks' uneven ones."""
        if self.cl and self.stage_epochs:
            return list(zip(self.resolutions, self.stage_epochs))
        return super().stages()

    def check(self) -> None:
        """Reject a config that cannot run, with a message that says what to change."""
        try:
            if self.stage_epochs and (not self.cl or len(self.stage_epochs) != len(
                    self.resolutions) or sum(self.stage_epochs) != self.epochs):
                raise ValueError(f"stage_epochs={self.stage_epochs} needs cl=True, one entry per "
                                 f"resolution {self.resolutions} and a sum of epochs={self.epochs}")
            super().check()               # every field's range, and the method's own rules
            self._check_combinations()
        except ValueError as e:
            raise ValueError(f"config {self.name!r}: {e}") from None

    def _check_combinations(self) -> None:
        if self.model in convnet.CONV_PRESETS and (self.kd or self.dropout):
            raise ValueError(f"model={self.model!r} has no distillation token and no dropout: "
                             f"it trains as a teacher (kd=False, dropout=0), not as a KD student")
        if self.teacher_model in convnet.CONV_PRESETS and self.sal:
            raise ValueError(f"sal=True reads the teacher's attention; teacher_model="
                             f"{self.teacher_model!r} has none: use sal=False or a ViT teacher")
        if self.teacher_flip and self.sal:
            raise ValueError("teacher_flip=True averages the teacher's logits over two views; "
                             "the saliency term reads one view's attention: use sal=False")
        if self.teacher_model in convnet.CONV_PRESETS and self.teacher_recipe != "default":
            raise ValueError(f"teacher_recipe={self.teacher_recipe!r} is the notebooks' ViT "
                             f"recipe; teacher_model={self.teacher_model!r} has its own "
                             f"(teacher.py): use teacher_recipe='default'")
        if self.randaug and self.augment == "crop_flip_aa":
            raise ValueError("randaug=True (TrivialAugment) and augment='crop_flip_aa' "
                             "(AutoAugment) each pick one policy per image; choose one of them")
        if self.kd and (self.mixup or (self.erasing and self.teacher_res == "full")):
            raise ValueError("mixup, and erasing with teacher_res='full', cannot be combined "
                             "with kd: the teacher would not see the images the student sees")
        method = METHODS[self.saliency]
        if self.compile and self.sal and not method.compilable:
            raise ValueError(f"compile=True cannot run saliency={self.saliency!r} (second-order "
                             f"gradients or hooks); use --compile=false or --saliency=rollout")
        if self.checkpoint and self.sal and not method.recomputable:
            raise ValueError(f"checkpoint=True is not supported with saliency={self.saliency!r} "
                             f"(second-order gradients through recomputed blocks are untested); "
                             f"use --checkpoint=false")
        t_patch = self.teacher_patch or self.patch_size
        if self.kd and (32 % t_patch or (self.teacher_res == "same" and self.cl
                                         and any(r % t_patch for r in self.resolutions))):
            raise ValueError(f"teacher_patch={t_patch} must divide 32 and, with "
                             f"teacher_res='same', every curriculum resolution {self.resolutions}")
        if self.reload_best and not self.patience:
            raise ValueError("reload_best=True acts when patience ends a stage: set patience > 0")
        if self.stop_epoch and (self.stop_epoch > self.epochs or self.patience):
            raise ValueError(f"stop_epoch={self.stop_epoch} must be at most epochs={self.epochs}, "
                             f"and not combined with patience (no notebook did both)")
        if self.arch == "irkd" and self.attn_dropout:
            raise ValueError("attn_dropout is arch='notebook''s own rate; irkd.ViT uses dropout "
                             "for the attention too")
        if any(not 1 <= e <= self.epochs for e in self.test_epochs):
            raise ValueError(f"test_epochs={self.test_epochs}: each must be an epoch in "
                             f"1..{self.epochs}")


# =============================================================================
# Building the model and its loss
# =============================================================================

def model_args(cfg: RunConfig) -> dict:
    args = dict(preset=cfg.model, patch_size=cfg.patch_size, distill_token=cfg.kd,
                dropout=cfg.dropout)
    if cfg.arch != "irkd":               # only then: checkpoints of irkd.ViT stay as they were
        args |= dict(arch=cfg.arch, attn_dropout=cfg.attn_dropout)
    return args


def make_model(preset: str, *, patch_size: int, distill_token: bool = False,
               dropout: float = 0.0, arch: str = "irkd", attn_dropout: float = 0.0) -> nn.Module:
    """The model that model_args describe: irkd's ViT, the notebooks' distilled student
    (arch="notebook", notebooks.py), or for a conv preset the ConvNet (convnet.py; no
    patches, so patch_size is unused; no token, no dropout)."""
    if arch == "notebook":
        return notebooks.build_notebook_model(preset, patch_size=patch_size,
                                              distill_token=distill_token, dropout=dropout,
                                              attn_dropout=attn_dropout)
    if preset not in convnet.CONV_PRESETS:
        return irkd.build_model(preset, patch_size=patch_size, distill_token=distill_token,
                                dropout=dropout)
    if distill_token or dropout:
        raise ValueError(f"a {preset!r} model has no distillation token and no dropout")
    return convnet.ConvNet(**convnet.CONV_PRESETS[preset])


def build(cfg: RunConfig, teacher: nn.Module | None, device: torch.device):
    """The model to train and its loss -> (model, the teacher on the device, step_model, loss_fn).

    step_model is what the steps run: the same module, compiled with cfg.compile (the weights
    are shared, so save and load through `model`); the loss's teacher_forward likewise.
    """
    torch.manual_seed(cfg.seed)            # the initial weights are a function of the seed
    model = make_model(**model_args(cfg)).to(device)
    model.grad_checkpoint = cfg.checkpoint
    teacher = teacher.to(device) if cfg.kd else None   # without kd a given teacher is unused
    loss_fn = irkd.IRKDLoss(teacher, alpha=cfg.alpha, temperature=cfg.temperature,
                            hard=cfg.hard_kd, gamma=cfg.gamma if cfg.sal else 0.0,
                            label_smoothing=cfg.label_smoothing, loss_form=cfg.loss_form,
                            saliency=METHODS[cfg.saliency](),
                            student_depth=len(getattr(model, "blocks", ())))  # ConvNet: none
    step_model = runs.maybe_compile(model, cfg.compile, device)
    # the teacher's forward that runs (its logits, or its logits and map): compiled as it is
    loss_fn.teacher_forward = runs.maybe_compile(loss_fn.teacher_forward, cfg.compile, device)
    return model, teacher, step_model, loss_fn


def lr_at(cfg: RunConfig, step: int, total_steps: int, warmup_steps: int) -> float:
    """The learning rate at `step`: constant, or linear warm-up then cosine to zero (or
    torch's OneCycleLR, its peak at the end of the warm-up: onecycle_torch_at)."""
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "onecycle_torch":
        return onecycle_torch_at(step, total_steps, cfg.lr, warmup_steps / total_steps)[0]
    if step < warmup_steps:
        return cfg.lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def onecycle_torch_at(step: int, total_steps: int, max_lr: float, pct_start: float,
                      div_factor: float = 20.0, final_div_factor: float = 5.0,
                      momenta: tuple[float, float] = (0.85, 0.95)) -> tuple[float, float]:
    """(lr, AdamW's beta1) at `step` as torch.optim.lr_scheduler.OneCycleLR(max_lr, total_steps,
    pct_start, anneal_strategy="cos", div_factor, final_div_factor) gives them (the notebooks'
    p4 teacher, P_4_ALL cell 5: 20, 5): lr rises from max_lr / div_factor to max_lr along a
    half cosine up to step pct_start * total - 1, then falls to max_lr / div_factor /
    final_div_factor; beta1 (cycle_momentum) moves the other way, 0.95 -> 0.85 -> 0.95."""
    low, high = momenta
    start_lr = max_lr / div_factor
    peak = float(pct_start * total_steps) - 1                      # torch's end of phase 1
    if step <= peak:
        a, b, frac = (start_lr, max_lr), (high, low), step / peak
    else:
        a, b = (max_lr, start_lr / final_div_factor), (low, high)
        frac = (step - peak) / (total_steps - 1 - peak)
    cos = lambda lo_hi: lo_hi[1] + (lo_hi[0] - lo_hi[1]) / 2 * (math.cos(math.pi * frac) + 1)  # noqa: E731
    return cos(a), cos(b)


def load_model(path: str, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a model saved by train() -> (model, checkpoint metadata)."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path}; "
                                "pass the model.pt of a trained run") from None
    except Exception as e:                       # torch's own text here is pages long
        why = "not a torch checkpoint, or a truncated one"
        raise ValueError(f"{path} is not a model.pt written by this project ({why}); pass the "
                         "model.pt of a trained teacher (runs/teacher_*/model.pt)") from e
    try:
        model = make_model(**ckpt["model_args"])
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else "no model"
        why = f"{type(e).__name__}: {first}"
        raise ValueError(f"{path} is not a model.pt written by this project ({why}); pass the "
                         "model.pt of a trained teacher (runs/teacher_*/model.pt)") from e
    return model.to(device), ckpt


# =============================================================================
# The loop
# =============================================================================

def train(cfg: RunConfig, *, teacher: nn.Module | None = None, data: dict | None = None,
          teacher_info: dict | None = None) -> dict:
    """Train one model through the curriculum, test it at every resolution -> results.json's dict.

    teacher: the frozen teacher when cfg.kd; data: load_cifar10()'s dict (read from
    cfg.data when None). runs.Run writes runs/NAME/ and resumes a run that was cut short.
    """
    cfg.check()                                 # a bad config fails here, before any work
    if cfg.kd and teacher is None:
        raise ValueError(f"config {cfg.name!r} has kd=True but no teacher was given")
    run = runs.Run(cfg, teacher_info=teacher_info)  # device, runs/NAME/, a checkpoint to resume
    d = data_lib.prepare(data if data is not None else data_lib.load_cifar10(cfg.data),
                         device=run.device, train_size=cfg.train_size, val_size=cfg.val_size,
                         test_size=cfg.test_size, batch_size=cfg.batch_size, split=cfg.split)
    model, teacher, step_model, loss_fn = build(cfg, teacher, run.device)
    # every random draw of the data comes from these three generators, all saved in checkpoints
    sampler = data_lib.EpochSampler(len(d["train_x"]), cfg.batch_size, cfg.seed, run.device)
    mix_gen = torch.Generator().manual_seed(cfg.seed + 1)
    aug_gen = torch.Generator(device=run.device).manual_seed(cfg.seed + 2)
    stages, steps = cfg.stages(), sampler.steps_per_epoch()     # [(res, epochs)], steps/epoch
    total_epochs = sum(e for _, e in stages)
    run.start(model, dict(sampler_rng=sampler.generator, mix_rng=mix_gen, aug_rng=aug_gen),
              model_args=model_args(cfg), params=irkd.count_params(model),
              epochs=cfg.stop_epoch or total_epochs, images_per_epoch=steps * cfg.batch_size)

    epoch, opt = 0, None
    for stage, (res, epochs) in enumerate(stages):
        # reload_best: a stage that patience ended hands on its best weights (unless this
        # stage had begun before a resume: its checkpoint already holds what followed)
        if cfg.reload_best and stage and epoch >= run.done and stopped(cfg, run, stage - 1):
            model.load_state_dict(run.stage_best["model"])
        for stage_epoch in range(1, epochs + 1):
            epoch += 1
            # skip what a resumed run finished, what lies past stop_epoch, and (patience > 0)
            # the rest of a stage that stopped improving
            if (epoch <= run.done or (cfg.stop_epoch and epoch > cfg.stop_epoch)
                    or stopped(cfg, run, stage)):
                continue
            # a fresh AdamW at every stage start: each resolution begins with new moments
            new_stage = cfg.fresh_optimizer and stage_epoch == 1
            if opt is None or new_stage:
                opt = irkd.make_optimizer(model, cfg)
                if run.opt_state is not None and not new_stage:
                    opt.load_state_dict(run.opt_state)  # resumed mid-stage, or one AdamW for all
            # one epoch of steps at `res`; nothing in this loop waits for the device
            model.train()
            loss_fn.train()
            sums = torch.zeros(5, device=run.device)        # loss, ce, kd, sal, correct
            run.begin_epoch(f"{cfg.name} {res}px ep {epoch}/{total_epochs}")
            crop = res if cfg.resize_mode == "crop" else 32  # "crop": res px cut out directly
            for idx, offsets, flips in sampler.epoch(crop=crop, augment=cfg.augment != "none"):
                # the student's view at res; the teacher's: the same, or 32 px of the same image;
                # a per-image policy on the crop: AutoAugment, TrivialAugment (randaug) or none
                aa = cfg.augment == "crop_flip_aa"
                xs, xt = data_lib.make_views(d["train_x"][idx], offsets, flips, res,
                                             cfg.resize_mode,
                                             full_view=cfg.kd and cfg.teacher_res == "full",
                                             aug_gen=aug_gen if cfg.randaug or aa else None,
                                             policy="autoaugment" if aa else "trivial")
                xs, target = data_lib.recipe_extras(xs, d["train_y"][idx], aug_gen=aug_gen,
                                                    erasing=cfg.erasing,
                                                    erasing_area=cfg.erasing_area,
                                                    mix_gen=mix_gen if cfg.mixup else None)
                lr = lr_at(cfg, run.step, steps * total_epochs, cfg.warmup_epochs * steps)
                if cfg.schedule == "onecycle_torch":     # torch's OneCycleLR cycles beta1 too
                    beta1 = onecycle_torch_at(run.step, steps * total_epochs, cfg.lr,
                                              cfg.warmup_epochs / total_epochs)[1]
                    for group in opt.param_groups:
                        group["betas"] = (beta1, group["betas"][1])
                run.before_step()
                stats = irkd.train_step(step_model, loss_fn, opt, xs, target,
                                        labels=d["train_y"][idx],
                                        teacher_input=xs if xt is None else xt, lr=lr,
                                        micro_batch=cfg.micro_batch)
                sums += stats
                run.after_step(stats[0])                    # the NaN watch, on the device
            # sync point: the NaN flag, read once per epoch; then validation (more sync points)
            seconds = run.end_steps(f"stage {stage} ({res} px), epoch {epoch}")
            checked = validate(model, d, res, cfg, test=epoch in cfg.test_epochs)
            # stage end: rollout maps of a fixed handful of test images, for plots.py (none for
            # a ConvNet: it has no attention)
            snap = (saliency_snapshot(model, teacher, d["test_x"][:8], res, cfg.teacher_res)
                    if stage_epoch == epochs else None)
            if snap is not None:
                snap |= dict(images=d["test_x"][:8], labels=d["test_y"][:8])
            run.end_epoch(model, opt, sums, seconds, snapshot=snap, stage=stage, res=res,
                          epoch=epoch, stage_epoch=stage_epoch, lr=lr, **checked)

    # the last stage, ended by patience, hands on its best weights too (the notebooks' CL cells)
    if cfg.reload_best and stopped(cfg, run, len(stages) - 1):
        model.load_state_dict(run.stage_best["model"])
    # test: the last weights, and the selected epoch's (cfg.select), at every resolution
    run.begin_test()
    chosen_epoch, chosen = ((run.stage_best["epoch"], run.stage_best["model"])
                            if cfg.select == "last_stage_best" else (run.best_epoch, run.best_state))
    best = chosen if chosen_epoch not in (None, run.done) else None   # run.done: the last epoch
    test, predictions = test_all(model, best, d, cfg)
    test["selected_epoch"] = run.done if cfg.select == "last" else chosen_epoch
    return run.finish(model, test, predictions=predictions, test_x=d["test_x"], labels=d["test_y"],
                      params=irkd.count_params(model), epochs=total_epochs, stages=stages,
                      teacher=teacher_info, train_images=len(d["train_x"]))


# =============================================================================
# An epoch's checks, the test, the saliency snapshots
# =============================================================================

def stopped(cfg: RunConfig, run: runs.Run, stage: int) -> bool:
    """Did patience end `stage`: cfg.patience epochs of it without a better validation?"""
    return bool(cfg.patience) and run.epochs_since_best(stage) >= cfg.patience


def main_head(heads: dict, wanted: str = "avg") -> str:
    """The reported head: `wanted` where the model has it, else "cls" (no distillation token)."""
    return wanted if wanted in heads else "cls"


def validate(model: nn.Module, d: dict, res: int, cfg: RunConfig, test: bool = False) -> dict:
    """An epoch's checks -> the log row's fields: validation at `res` and at 32 px (the
    reported head's 32-px accuracy, select_val, picks the best epoch); with test=True also
    the test set at 32 px (its predictions go to predictions.json)."""
    val = irkd.evaluate(model, d["val_x"], d["val_y"], res)
    val32 = val if res == 32 else irkd.evaluate(model, d["val_x"], d["val_y"], 32)
    head = main_head(val, cfg.head)
    tested = irkd.predict(model, d["test_x"], 32) if test else None
    return dict(select_val=val32[head], test_predictions=tested, val_acc=val[head], val_heads=val,
                val_acc_32=val32[head], val_heads_32=val32,
                test_heads_32=irkd.accuracy(tested, d["test_y"]) if tested else None)


def test_all(model: nn.Module, best_state: dict | None, d: dict, cfg: RunConfig):
    """The last weights (and the best validation epoch's, when they differ) on the test set at
    every resolution -> (results.json's test fields, {which: 32-px predictions})."""
    def predict_all(m):
        bar = tqdm(irkd.eval_resolutions(cfg.resolutions),
                   desc=f"test ({len(d['test_x'])} images)", unit="res", leave=False)
        return {r: irkd.predict(m, d["test_x"], r) for r in bar}
    final = best = predict_all(model)
    if best_state is not None:
        best_model = make_model(**model_args(cfg)).to(d["test_x"].device)
        best_model.load_state_dict(best_state)
        best = predict_all(best_model)
    heads = {w: irkd.by_resolution(p, d["test_y"]) for w, p in (("last", final), ("best", best))}
    head, chosen = main_head(heads["last"], cfg.head), heads["last" if cfg.select == "last" else "best"]
    test = dict(test_acc=chosen[head]["32"], test_head=head, test_acc_by_res=chosen[head],
                heads=chosen, select=cfg.select, heads_last=heads["last"], heads_best=heads["best"])
    return test, dict(last=final[32], best=best[32])


@torch.no_grad()
def saliency_snapshot(model: nn.Module, teacher: nn.Module | None, images: torch.Tensor, res: int,
                      teacher_res: str) -> dict | None:
    """Rollout maps of the student (and teacher) for a fixed handful of images, for plots.py.
    A ConvNet has no attention: None for a ConvNet model, no map for a teacher that is not a
    ViT."""
    if isinstance(model, convnet.ConvNet):
        return None
    was_training = model.training
    model.eval()
    x = irkd.normalize(images)
    _, attn = model(irkd.resize(x, res), return_attn=True)
    # clone: a map is a view of its (B, N, N) flow, which torch.save would store whole
    snap = dict(res=res, student=irkd.attention_rollout(attn, num_prefix=model.num_prefix)
                .cpu().clone())
    if teacher is not None and hasattr(teacher, "num_prefix"):   # a ViT: a ConvNet or a
        # flip-averaged teacher (teacher.FlipAveraged) has no one attention map
        _, t_attn = teacher(irkd.resize(x, 32 if teacher_res == "full" else res), return_attn=True)
        snap["teacher"] = irkd.attention_rollout(t_attn, num_prefix=teacher.num_prefix).cpu().clone()
    model.train(was_training)
    return snap
