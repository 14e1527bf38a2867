"""A run's bookkeeping: the device, runs/NAME/ and its files, resume, progress, results, the CLI.

    RunOptions      where and how a run runs: data, sizes, seed, device, output, resume, memory
    setup_device    validate the device name; TF32 on CUDA, the allocator on a CPU
    compile_model   torch.compile for training (CUDA graphs on CUDA)
    Run             runs/NAME/: config.json, log.jsonl, checkpoint.pt, saliency.pt,
                    model.pt, results.json; bit-identical resume; the NaN watch; the bar
    parse_overrides the --field=value command line shared by experiments.py and teacher.py
    guarded         Ctrl-C and known failures -> a message and an exit status

train.train() calls a Run to record what happens; the Run never calls back into the
method. Imports nothing of the project.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import json
import os
import pickle
import platform
import re
import subprocess
import sys
import tempfile
import time

import torch
from tqdm import tqdm

# =============================================================================
# A run's options (train.RunConfig adds them to the method's irkd.Config)
# =============================================================================

def option(default, valid: str | None = None):
    """A field with its valid range stated once, as irkd.spec() states it ("[0, inf)")."""
    return dataclasses.field(default=default, metadata={} if valid is None else {"valid": valid})


@dataclasses.dataclass
class RunOptions:
    """Where and how a run runs; none of it changes what the method computes (but the seed and
    the data sizes)."""
    name: str = "run"
    data: str = "data"                 # the directory that holds (or gets) cifar-10-batches-py/
    train_size: int = option(0, "[0, inf)")   # 0 = all 45,000 training images
    val_size: int = option(0, "[0, inf)")     # 0 = all 5,000 validation images
    test_size: int = option(0, "[0, inf)")    # 0 = all 10,000 test images
    seed: int = option(0, "[0, inf)")         # the initial weights and every random draw
    device: str = "auto"               # "auto", "cpu", "cuda", "cuda:1", "mps"
    out: str = "runs"
    quick: bool = False                # the few-minute smoke path (experiments.quick)
    resume: bool = True                # continue from runs/NAME/checkpoint.pt when it exists
    overwrite: bool = False            # with resume=False: replace a finished run's directory
    compile: bool = False              # torch.compile the student and the teacher's forward
    checkpoint: bool = False           # recompute each block in backward: less memory, same numbers
    micro_batch: int = option(0, "[0, inf)")  # > 0: forward/backward in chunks of this many
                                       # images, gradients summed (one step; less memory)
    test_epochs: tuple = ()            # epochs after which the model is also tested at 32 px


# =============================================================================
# The device
# =============================================================================


def pick_device(name: str = "auto") -> torch.device:
    """"auto" -> CUDA, else MPS, else CPU; any other name is checked before any work starts."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device={name!r} is not a device; "
                         f"use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} but this torch sees no CUDA GPU "
                             f"(torch {torch.__version__}); use --device=auto or --device=cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device={name!r} but there are only "
                             f"{torch.cuda.device_count()} GPU(s)")
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None)
                                       and torch.backends.mps.is_available()):
        raise ValueError(f"device={name!r} but MPS is not available here; "
                         f"use --device=auto or --device=cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={name!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return device


def setup_device(name: str = "auto") -> torch.device:
    """The training device, with its speed settings (they change no number on a CPU)."""
    device = pick_device(name)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True   # TF32 for any float32 matmul left
        torch.backends.cudnn.allow_tf32 = True
    if device.type == "cpu":
        keep_freed_memory()                            # no page-faulting of activations every step
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return (f"{device.type} ({platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads)")


def keep_freed_memory() -> bool:
    """glibc: serve every allocation from the heap and never hand freed memory back to the OS.

    By default glibc maps each block above 32 MB (the ViT-Small teacher's MLP activations
    at batch 128 are 51 MB) with its own mmap and trims the heap whenever a step frees its
    activations, so every step faults its memory in again, page by page. In this VM that
    costs 2.6-4.8 s of kernel time per KD+Sal step of the small student (a 9.8 s step
    instead of 7.8 s). Two mallopt calls end it; the price is that the process keeps
    its peak memory. Returns False where it does not apply (not glibc, or refused).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4   # from <malloc.h>; a threshold of -1: never trim
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, -1))


def compile_model(model, device: torch.device, backend: str = "inductor"):
    """torch.compile with one static graph per resolution and attention path.

    On CUDA, mode "reduce-overhead" replays each step as a CUDA graph: the 9-token 12-px
    stage is otherwise bound by kernel launches, not by arithmetic. Callers mark each new
    step with torch.compiler.cudagraph_mark_step_begin() (Run.before_step does). On a CPU,
    inductor's C++. The returned module shares its parameters with `model`: save and load
    through `model`.
    """
    # 6 resolutions x (fused, explicit) x (train, eval) graphs: above dynamo's default limit of 8,
    # past which it would silently fall back to eager.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    mode = "reduce-overhead" if device.type == "cuda" and backend == "inductor" else None
    return torch.compile(model, backend=backend, mode=mode, dynamic=False)


def maybe_compile(module, enabled: bool, device: torch.device):
    """compile_model(module) when enabled (and there is a module), else the module itself."""
    return compile_model(module, device) if enabled and module is not None else module


def peak_memory_mib(device: torch.device) -> dict:
    """The process's peak resident memory so far (MiB; a teacher trained first counts too),
    and on CUDA the peak of tensors on the GPU."""
    peak = {}
    try:
        import resource
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss     # KiB on Linux (bytes on macOS)
        peak["rss"] = round(kib / 1024 / (1024 if sys.platform == "darwin" else 1), 1)
    except (ImportError, OSError):
        pass
    if device.type == "cuda":
        peak["cuda"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peak


def repo_relative(path: str) -> str:
    """`path` relative to this repository when it lies inside it (so that committed results do
    not name the machine that wrote them), else the absolute path."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.abspath(path)
    return os.path.relpath(path, here) if path.startswith(here + os.sep) else path


def git_commit() -> str:
    """The commit this code runs on ("-dirty" when tracked files differ from it), or "unknown"."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        def git(*args):
            return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        return git("rev-parse", "HEAD") + ("-dirty" if git("status", "--porcelain", "-uno") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# =============================================================================
# Files: atomic writes, the run directory, checkpoints
# =============================================================================


def write_json(path: str, obj) -> None:
    """Write JSON atomically: a temporary file, then one rename; never a half-written file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def save_atomic(obj, path: str) -> None:
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def make_run_dir(out: str, name: str) -> str:
    run_dir = os.path.join(out, name)
    try:
        os.makedirs(run_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir):
            pass
    except OSError as e:
        raise OSError(f"cannot write to the output directory {run_dir} ({e.strerror}); "
                      f"choose another with --out=DIR") from e
    return run_dir


def check_run_dir(cfg) -> None:
    """Refuse to train a finished run again unless asked by name (--overwrite=true). A finished
    run whose checkpoint is still there may be resumed: that only tests it again."""
    run_dir = os.path.join(cfg.out, cfg.name)
    resumable = cfg.resume and os.path.exists(os.path.join(run_dir, "checkpoint.pt"))
    finished = os.path.exists(os.path.join(run_dir, "results.json"))
    if finished and not cfg.overwrite and not resumable:
        raise ValueError(f"{run_dir} holds a finished run, which this would train again over. "
                         f"Pass --overwrite=true to replace it, or choose another --name or --out")


@contextlib.contextmanager
def exclusive(lock_path: str, what: str = "this work"):
    """Hold an exclusive lock on lock_path (fcntl.flock): one process at a time inside, the
    others wait. The lock goes with the process, so a killed holder never blocks the rest.
    Where there is no fcntl (Windows), no lock."""
    os.makedirs(os.path.dirname(lock_path) or ".", exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock_path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting: another process is {what} (lock {lock_path})", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_checkpoint(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: "
                         f"{str(e).strip()[:160]}); delete it to start the run over, or re-run "
                         f"with --resume=false") from e


# Config fields that may change between a run and its resumption: where and how fast it
# runs, and what it reports, not what it computes (checkpoint and micro_batch: the same step,
# up to float rounding for micro_batch). "out" is where the checkpoint was found,
# however it is spelled (./runs, an absolute path, a moved directory).
RESUMABLE_CHANGES = {"device", "resume", "data", "compile", "overwrite", "head", "select", "out",
                     "checkpoint", "micro_batch"}


def resume_state(cfg, run_dir: str, teacher_info: dict | None) -> dict | None:
    """The last epoch-end checkpoint of this run, if it may be continued; None to start fresh."""
    path = os.path.join(run_dir, "checkpoint.pt")
    if not cfg.resume or not os.path.exists(path):
        return None
    ckpt = load_checkpoint(path)
    old, new = ckpt["config"], dataclasses.asdict(cfg)
    # a field added since the checkpoint was written had its default
    defaults = dataclasses.asdict(type(cfg)())
    changed = [k for k in new if k not in RESUMABLE_CHANGES and old.get(k, defaults[k]) != new[k]]
    if changed:
        raise ValueError(f"{run_dir} holds a run with a different config "
                         f"({', '.join(changed)} differ); re-run with --resume=false to start "
                         f"over, or choose another --name or --out")
    old_md5 = (ckpt.get("teacher_info") or {}).get("md5")
    if old_md5 != (teacher_info or {}).get("md5"):
        raise ValueError(f"{run_dir} was trained with another teacher "
                         f"({(ckpt.get('teacher_info') or {}).get('path')}); "
                         f"re-run with --resume=false to start over with this one")
    return ckpt


# =============================================================================
# One run
# =============================================================================


class Run:
    """runs/NAME/ and everything a run records; it never calls back into the method.

    Files: config.json; log.jsonl (one line per epoch); checkpoint.pt (every epoch,
    atomically: weights, AdamW, every RNG, counters); saliency.pt (every stage end);
    model.pt and results.json at the end. A run whose checkpoint.pt exists continues from
    it, bit for bit: train() skips the finished epochs and restore() puts every generator
    back where the last finished epoch left it.
    """

    def __init__(self, cfg, *, teacher_info: dict | None = None):
        self.cfg, self.teacher_info = cfg, teacher_info
        self.device = setup_device(cfg.device)
        check_run_dir(cfg)
        self.dir = make_run_dir(cfg.out, cfg.name)
        self.ckpt = resume_state(cfg, self.dir, teacher_info)
        self.commit = git_commit()
        self.done, self.step, self.train_s, self.opt_state = 0, 0, 0.0, None
        self.rows, self.snapshots, self.generators, self.predictions = [], [], {}, {}
        self.starts: list[dict] = []      # every start of this run: its commit ("-dirty": a tree
                                          # with uncommitted changes) and the epochs done before
        # the best validation epoch so far: its number, its accuracy and a copy of its weights
        self.best_epoch, self.best_val, self.best_state = None, float("-inf"), None
        # the best epoch of the current stage by its own validation, kept only for the cells
        # that reload it or test it (the notebooks' CL cells): stage, epoch, val, model
        self.stage_best: dict | None = None
        self.keeps_stage_best = cfg.reload_best or cfg.select == "last_stage_best"

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def start(self, model, generators: dict[str, torch.Generator], *, model_args: dict, epochs: int,
              images_per_epoch: int, **config_extra) -> None:
        """Write config.json; on resume, restore the weights and every RNG; open log and bar.

        generators: {checkpoint key: generator}, saved at every epoch end; model_args:
        what rebuilds the model (saved with every checkpoint).
        """
        cfg, ckpt = self.cfg, self.ckpt
        self.generators, self.model_args = generators, model_args
        config = dataclasses.asdict(cfg)
        for key in ("data", "out", "teacher"):   # paths relative to the repository inside it
            if config.get(key):
                config[key] = repo_relative(config[key])
        write_json(self.path("config.json"), dict(config, **config_extra,
                                                  teacher_info=self.teacher_info,
                                                  commit=self.commit))
        if ckpt is not None:  # continue exactly where the last completed epoch left off
            model.load_state_dict(ckpt["model"])
            for key, gen in generators.items():
                state = ckpt.get(key)
                if state is not None and len(state) == len(gen.get_state()):
                    gen.set_state(state)
                elif key != "aug_rng" or cfg.randaug or cfg.erasing:
                    # CPU and CUDA generators differ in size: a device change starts a new stream
                    print(f"note: resumed on {self.device.type}; "
                          f"the draws of {key} restart from the seed")
            torch.set_rng_state(ckpt["torch_rng"])
            if self.device.type == "cuda" and ckpt.get("cuda_rng") is not None:
                # dropout draws on the GPU's generator
                torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
            self.done, self.step, self.train_s = ckpt["epoch"], ckpt["step"], ckpt["train_s"]
            self.starts = ckpt.get("starts", [])
            self.opt_state = ckpt["optimizer"]
            if ckpt.get("best") is not None:  # absent in checkpoints written before it existed
                best = ckpt["best"]
                self.best_epoch, self.best_val, self.best_state = (best["epoch"], best["val"],
                                                                   best["model"])
            self.stage_best = ckpt.get("stage_best")
            try:
                with open(self.path("log.jsonl")) as f:
                    self.rows = [json.loads(line) for line in f if line.strip()][:self.done]
                sal = self.path("saliency.pt")
                self.snapshots = (torch.load(sal, weights_only=False)["stages"]
                                  if os.path.exists(sal) else [])
                if os.path.exists(self.path("predictions.json")):
                    with open(self.path("predictions.json")) as f:
                        self.predictions = {k: v for k, v in json.load(f).items()
                                            if k.startswith("epoch_") and int(k[6:]) <= self.done}
            except (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError,
                    EOFError) as e:
                raise ValueError(f"{self.dir}: log.jsonl or saliency.pt is damaged "
                                 f"({type(e).__name__}: {e}); re-run with --resume=false to start "
                                 f"the run over") from e
            print(f"resuming {cfg.name} from {self.path('checkpoint.pt')} "
                  f"after epoch {self.done}/{epochs}")
        self.starts.append(dict(commit=self.commit, after_epoch=self.done))
        # the log holds exactly the finished epochs; later lines are appended as epochs end
        with open(self.path("log.jsonl") + ".tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.rows)
        os.replace(self.path("log.jsonl") + ".tmp", self.path("log.jsonl"))
        self.log = open(self.path("log.jsonl"), "a")
        self.bar = tqdm(total=epochs * images_per_epoch, initial=self.done * images_per_epoch,
                        unit="img", unit_scale=True, dynamic_ncols=True, smoothing=0.05,
                        mininterval=1.0)

    def begin_epoch(self, description: str) -> None:
        self.bar.set_description(description)
        self.t0, self.epoch_steps = time.time(), 0
        self.first_bad = torch.full((), -1, device=self.device)  # first step with a non-finite loss

    def before_step(self) -> None:
        if self.cfg.compile and self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are consumed

    def after_step(self, loss: torch.Tensor) -> None:
        """The NaN watch, on the device (no sync), and the progress bar."""
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(loss),
                                     torch.full_like(self.first_bad, self.step), self.first_bad)
        self.step += 1
        self.epoch_steps += 1
        self.bar.update(self.cfg.batch_size)

    def end_steps(self, where: str) -> float:
        """Sync point, once per epoch: raise if the loss went bad, else -> seconds of the steps."""
        if self.first_bad.item() >= 0:
            self.bar.close()
            kept = (f"the last good checkpoint (epoch {self.done}) is kept in "
                    f"{self.path('checkpoint.pt')}"
                    if os.path.exists(self.path("checkpoint.pt"))
                    else "no epoch had finished, so no checkpoint was kept")
            raise FloatingPointError(
                f"{self.cfg.name}: the loss became NaN or infinite at {where}, "
                f"step {int(self.first_bad)}; training stopped; {kept}. Try a lower --lr.")
        return time.time() - self.t0

    def end_epoch(self, model, opt, sums: torch.Tensor, seconds: float, *, select_val: float,
                  snapshot: dict | None = None, test_predictions: dict | None = None,
                  **row) -> dict:
        """Record a finished epoch: the best weights so far, saliency.pt at a stage end, the test
        predictions of this epoch (if any), checkpoint.pt, then a log line.

        sums: (loss, ce, kd, sal, correct) summed over the epoch's steps, on the device;
        select_val: the validation accuracy that picks the best epoch. The checkpoint comes
        first: a kill between the two loses only a log line, which the resumed run writes again.
        """
        n, B = self.epoch_steps, self.cfg.batch_size
        # sync point
        s = (sums / torch.tensor([n] * 4 + [n * B / 100], device=sums.device)).tolist()
        row = dict(stage=row.pop("stage"), res=row.pop("res"), epoch=row.pop("epoch"),
                   stage_epoch=row.pop("stage_epoch"), lr=row.pop("lr"), loss=s[0], ce=s[1],
                   kd=s[2], sal=s[3], train_acc=s[4], **row, seconds=round(seconds, 3),
                   images_per_s=round(n * B / seconds, 1))
        self.rows.append(row)
        if select_val > self.best_val:        # a copy of the weights, kept until a better epoch
            self.best_epoch, self.best_val = row["epoch"], select_val
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if self.keeps_stage_best and (self.stage_best is None or row["stage"] != self.stage_best[
                "stage"] or row["val_acc"] > self.stage_best["val"]):  # a new stage, or better
            self.stage_best = dict(stage=row["stage"], epoch=row["epoch"], val=row["val_acc"],
                                   model={k: v.detach().clone()
                                          for k, v in model.state_dict().items()})
        if test_predictions is not None:
            self.predictions[f"epoch_{row['epoch']}"] = encode_predictions(test_predictions)
            write_json(self.path("predictions.json"), self.predictions)
        if snapshot is not None:              # stage end: keep the maps for plots.py
            images, labels = snapshot.pop("images"), snapshot.pop("labels")
            self.snapshots.append(dict(stage=row["stage"], **snapshot))
            # clone: a slice of the test set would drag the whole tensor into the file
            save_atomic(dict(images=images.cpu().clone(), labels=labels.cpu().clone(),
                             stages=self.snapshots), self.path("saliency.pt"))
        self.train_s += time.time() - self.t0  # training, validation and snapshots of this epoch
        cfg = self.cfg
        save_atomic(dict(model=model.state_dict(), optimizer=opt.state_dict(), stage=row["stage"],
                         stage_epoch=row["stage_epoch"], epoch=row["epoch"], step=self.step,
                         train_s=self.train_s,
                         **{k: g.get_state() for k, g in self.generators.items()},
                         torch_rng=torch.get_rng_state(), config=dataclasses.asdict(cfg),
                         cuda_rng=(torch.cuda.get_rng_state_all()
                                   if self.device.type == "cuda" else None),
                         model_args=self.model_args, teacher_info=self.teacher_info,
                         starts=self.starts,
                         best=dict(epoch=self.best_epoch, val=self.best_val,
                                   model=self.best_state),
                         stage_best=self.stage_best),
                    self.path("checkpoint.pt"))
        self.done = row["epoch"]
        self.log.write(json.dumps(row) + "\n")
        self.log.flush()
        self.bar.set_postfix(loss=f"{s[0]:.3f}", train=f"{s[4]:.1f}", val=f"{row['val_acc']:.1f}")
        return row

    def epochs_since_best(self, stage: int) -> int:
        """Finished epochs of `stage` since its best validation accuracy (at its resolution)."""
        vals = [r["val_acc"] for r in self.rows if r["stage"] == stage]
        return len(vals) - 1 - vals.index(max(vals)) if vals else 0

    def begin_test(self) -> None:
        self.bar.close()
        self.log.close()
        self.t_test = time.time()

    def finish(self, model, test: dict, *, params: int, test_x: torch.Tensor, labels: torch.Tensor,
               predictions: dict, **extra) -> dict:
        """Write predictions.json, model.pt and results.json -> results.json's dict.

        test: the method's numbers (test_acc, test_head, test_acc_by_res, heads, ...);
        predictions: {which weights: {head: (N,) classes}} on the test set at 32 px.
        """
        cfg = self.cfg
        self.predictions.update(labels=encode_predictions({"y": labels})["y"],
                                **{k: encode_predictions(p) for k, p in predictions.items()})
        write_json(self.path("predictions.json"), self.predictions)
        at_epoch = {str(r["epoch"]): r["test_heads_32"] for r in self.rows
                    if r.get("test_heads_32")}
        results = dict(name=cfg.name, **test, best_epoch=self.best_epoch, at_epoch=at_epoch,
                       val_acc=self.rows[-1]["val_acc"], params=params,
                       wall_s=round(self.train_s + time.time() - self.t_test, 1),
                       train_s=round(self.train_s, 1), device=device_name(self.device),
                       seed=cfg.seed,
                       **extra, test_images=len(test_x), quick=cfg.quick, commit=self.commit,
                       starts=self.starts,
                       peak_memory_mib=peak_memory_mib(self.device),
                       # which copy of the data: the official archive and the JPEG copy differ here
                       test_md5=hashlib.md5(test_x.cpu().numpy().tobytes()).hexdigest())
        save_atomic(dict(model=model.state_dict(), model_args=self.model_args,
                         config=dataclasses.asdict(cfg), test_acc=results["test_acc"]),
                    self.path("model.pt"))
        write_json(self.path("results.json"), results)
        return results


def encode_predictions(preds: dict[str, torch.Tensor]) -> dict[str, str]:
    """{head: (N,) classes 0..9} -> {head: "3817..."}: one digit per image, small in git."""
    return {h: "".join(map(str, p.tolist())) for h, p in preds.items()}


# =============================================================================
# The command line shared by experiments.py and teacher.py
# =============================================================================

def arm_name(name: str) -> str:
    """The run name without its seed suffix: "study_kd-seed2" -> "study_kd" (see seeded)."""
    return re.sub(r"-seed\d+$", "", name)


def seeded(cfg, seed: int):
    """The config for one seed: seed 0 keeps NAME, any other seed runs in NAME-seedN, so that
    repeats never share (or overwrite) a directory. A teacher is trained once, with its own seed."""
    if cfg.name.startswith("teacher_"):
        return cfg
    if seed == 0:
        return dataclasses.replace(cfg, seed=0)
    return dataclasses.replace(cfg, name=f"{arm_name(cfg.name)}-seed{seed}", seed=seed)


def finished(cfg) -> bool:
    """True when runs/NAME/results.json exists and --overwrite=true was not given."""
    return not cfg.overwrite and os.path.exists(os.path.join(cfg.out, cfg.name, "results.json"))


def parse_seeds(rest: list[str]) -> list[int] | None:
    """Take --seeds=0,1,2 (or --seeds 0,1,2) out of `rest` -> the seeds, or None."""
    seeds = None
    if "--seeds" in rest:                      # "--seeds 0,1,2" -> "--seeds=0,1,2"
        i = rest.index("--seeds")
        rest[i:i + 2] = ["--seeds=" + (rest[i + 1] if i + 1 < len(rest) else "")]
    for a in [a for a in rest if a.startswith("--seeds=")]:
        rest.remove(a)
        try:
            seeds = [int(v) for v in a.split("=", 1)[1].split(",")]
        except ValueError:
            raise ValueError(f"{a!r}: expected comma-separated integers, e.g. --seeds=0,1,2")
    return seeds


def parse_overrides(argv: list[str], config_cls) -> dict:
    """["--lr=1e-3", "--quick", "--teacher", "PATH"] -> {"lr": 0.001, ...}, type-checked
    against the dataclass config_cls; an unknown field or a bad value raises ValueError."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    out, args = {}, list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}; options look like --field=value")
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key not in fields:
            raise ValueError(f"unknown field {key!r}; valid fields: {', '.join(fields)}")
        default = fields[key].default
        if not eq:
            if isinstance(default, bool):
                value = "true"
            elif args:
                value = args.pop(0)
            else:
                raise ValueError(f"--{key} needs a value")
        out[key] = convert(key, value, default)
    return out


def convert(key: str, value: str, default):
    kind = type(default)
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        if kind is tuple:
            return tuple(int(v) for v in value.split(","))
        return kind(value)
    except ValueError:
        example = {bool: "true or false", tuple: "comma-separated integers, e.g. 12,16,20",
                   int: "an integer", float: "a number", str: "a string"}[kind]
        raise ValueError(f"--{key}={value!r}: expected {example}") from None


def guarded(fn) -> int:
    """Run a training command; Ctrl-C and known failures become a message and an exit status."""
    try:
        fn()
    except KeyboardInterrupt:
        # Every finished epoch is already in checkpoint.pt; the same command continues from it.
        print(f"\ninterrupted: the last finished epoch is saved. Resume with:\n"
              f"  {os.path.relpath(sys.executable)} {' '.join(sys.argv)}", file=sys.stderr)
        return 130
    except (ValueError, OSError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
