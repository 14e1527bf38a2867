"""Speed benchmark for IRKD: training throughput, pipeline overhead, curriculum cost, FLOP/s.

    python bench.py [--quick | --full] [--presets=custom,tiny,small] [--modes=CE,KD,KD+Sal]
                    [--resolutions=12,16,20,24,28,32] [--steps=N] [--warmup=N] [--batch_size=128]
                    [--patch_size=4] [--teacher_res=same] [--device=auto] [--compile]
                    [--malloc=keep|system] [--patience=120] [--out=runs/bench.json]

What it measures, all in one run on one device:

  * training images/s for every preset (the student) x mode x resolution, where a step
    is train()'s inner loop body: take a batch from EpochSampler, make_views (crop,
    flip, normalise, resize), student forward and backward, the frozen teacher's
    forward inside IRKDLoss, the losses (CE, KD, rollout + saliency), AdamW step and
    the on-device loss bookkeeping. Modes: CE (no teacher, no distillation token),
    KD (distillation token + soft KD against a ViT-Small teacher), KD+Sal (KD plus
    the saliency loss: explicit attention and attention_rollout for both models).
  * the teacher's (ViT-Small, same patch) forward images/s, fused and explicit attention.
  * pipeline overhead = full step / (bare student forward+backward+step + bare teacher
    forward), the bare pieces run on a ready-made input tensor with a plain CE loss,
    in the same run and interleaved with the full steps.
  * curriculum cost ratio = sum of the six stages' step times / (6 x the 32-px step
    time) (an epoch has the same number of steps at every resolution), beside the
    token-count ideal sum_r N(r) / (6 N(32)), N(r) = prefix + (r / patch)^2.
  * FLOP/s achieved and its fraction of a matmul peak measured in the same run
    (float32 torch.mm on CPU; bfloat16 torch.mm on CUDA, where training runs in bf16).

On Linux/glibc the run first calls runs.keep_freed_memory() (--malloc=keep, the default; see
its docstring): without it, page faults cost a KD+Sal step of the small student 25-30 %
on this VM. --malloc=system measures glibc's defaults.

FLOPs are counted analytically, matmuls only (multiply-add = 2 FLOPs), per image:

    forward(N tokens) = 2 * n_patches * (3 p^2 D)                 patch embedding
                      + depth * (2 * N * (4 D^2 + 2 D M)          qkv, proj, MLP weights
                                 + 4 * N^2 * D)                   q k^T and attn @ v
                      + 2 * D * C * heads_out                     cls (and dist) heads
    training step     = 3 * forward(student)                     (backward = 2 x forward)
                      + forward(teacher)                         (KD modes; no backward)
                      + rollout: 2 * N^3 per layer, x3 for the student, x1 for the teacher (Sal)

Timing: time.perf_counter around each timed region; on CUDA torch.cuda.synchronize
only at the edges of a timed block. A cell reports the best (minimum) per-step time of
its timed steps: the machine may be shared, and the minimum is the stable estimate of
what the hardware does. The rounds are interleaved across modes (and the bare pieces),
so a burst of outside load hits all the things a ratio compares. On a CPU, a measurement
during which other processes kept more than a tenth of a core busy is retried after
waiting (at most --patience seconds) for the machine to go quiet; the report counts them.

JSON (--out, default runs/bench.json): meta (device, torch, plan, malloc, wall_s,
other_cpu_load, ...), peak {flops_per_s, dtype, n}, teacher_forward {res: {images_per_s,
explicit_images_per_s}}, train {preset: {mode: {res: {step_s, step_s_median, step_s_all,
images_per_s, tokens, gflop_per_step, flops_per_s, mfu}}}}, overhead {preset: {mode: {res:
{full_step_s, bare_student_s, bare_teacher_s, ratio}}}}, sal_over_kd {preset: {per_res,
summed}}, curriculum {preset: {mode: {ratio, ideal, rel_err}}}, mfu_32 {preset: {mode:
mfu}}, targets {pipeline_overhead | sal_over_kd | curriculum: {value, target, met, where}}
(the worst case over what was measured), ideal_curriculum_ratio (patch, two prefix
tokens), host_sync_free (CUDA only: {preset: {mode: bool}}).

Default (--quick, about four and a half minutes on a quiet 2-core CPU): custom and tiny
at all six resolutions with 2 timed steps, small at 12 and 32 px with 1, the teacher
with 1, each after 1 warm-up step; before those, at a preset's first resolution (32 px:
the largest comes first), up to 4 untimed KD+Sal steps until the heap stops growing
(see settle()); the overhead for custom and tiny at 12 and 32 px. The KD modes are
dominated by the ViT-Small teacher's forward (~1.85 s per batch of 128 at 32 px on 2
cores), which is what makes more steps expensive here. --full: every preset at every
resolution, 10 / 5 / 3 timed steps after 2 warm-up steps, the overhead everywhere (tens
of minutes on this CPU). --steps / --resolutions override either plan for every preset.
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import data as data_lib
import irkd
import runs

MODES = ("CE", "KD", "KD+Sal")
TEACHER_PRESET = "small"                 # the paper's teacher: ViT-Small, same patch as the student
NUM_IMAGES = 4096                        # synthetic uint8 images held on the device (32 batches)
# The run plans: preset -> (resolutions, timed steps); warm-up steps; where the overhead is timed.
PLANS = {
    "quick": dict(presets={"custom": (irkd.RESOLUTIONS, 2), "tiny": (irkd.RESOLUTIONS, 2),
                           "small": ((12, 32), 1)},
                  warmup=1, overhead_res=(12, 32), overhead_presets=("custom", "tiny"),
                  teacher_steps=1),
    "full": dict(presets={"custom": (irkd.RESOLUTIONS, 10), "tiny": (irkd.RESOLUTIONS, 5),
                          "small": (irkd.RESOLUTIONS, 3)},
                 warmup=2, overhead_res=irkd.RESOLUTIONS, overhead_presets=tuple(irkd.PRESETS),
                 teacher_steps=5),
}
TARGETS = dict(pipeline_overhead=1.10, sal_over_kd=1.20, curriculum_rel_err=0.10)

# =============================================================================
# FLOPs, tokens and the ideal curriculum cost
# =============================================================================


def num_tokens(res: int, patch_size: int, num_prefix: int) -> int:
    return num_prefix + (res // patch_size) ** 2


def forward_flops(preset: str, res: int, patch_size: int, num_prefix: int,
                  num_classes: int = 10) -> int:
    """Matmul FLOPs of one image's forward pass (formula in the module docstring)."""
    p = irkd.PRESETS[preset]
    D, depth, M = p["dim"], p["depth"], p["mlp_dim"]
    n_patches = (res // patch_size) ** 2
    N = num_prefix + n_patches
    embed = 2 * n_patches * 3 * patch_size ** 2 * D
    blocks = depth * (2 * N * (4 * D * D + 2 * D * M) + 4 * N * N * D)
    heads = 2 * D * num_classes * num_prefix
    return embed + blocks + heads


def rollout_flops(preset: str, res: int, patch_size: int, num_prefix: int) -> int:
    N = num_tokens(res, patch_size, num_prefix)
    return irkd.PRESETS[preset]["depth"] * 2 * N ** 3


def step_flops(preset: str, mode: str, res: int, patch_size: int, teacher_res: int,
               teacher_preset: str = TEACHER_PRESET) -> int:
    """Matmul FLOPs of one training step, per image (a teacher of `teacher_preset`)."""
    prefix = 1 if mode == "CE" else 2
    flops = 3 * forward_flops(preset, res, patch_size, prefix)
    if mode != "CE":
        flops += forward_flops(teacher_preset, teacher_res, patch_size, 1)
    if mode == "KD+Sal":
        flops += 3 * rollout_flops(preset, res, patch_size, prefix)
        flops += rollout_flops(teacher_preset, teacher_res, patch_size, 1)
    return flops


def ideal_curriculum_ratio(resolutions=irkd.RESOLUTIONS, patch_size: int = 4,
                           num_prefix: int = 2) -> float:
    """sum_r N(r) / (len * N(32)): the curriculum's cost if a step cost the same per token.
    Patch 4, two prefix tokens: (11+18+27+38+51+66) / (6*66) = 0.5328."""
    tokens = [num_tokens(r, patch_size, num_prefix) for r in resolutions]
    return sum(tokens) / (len(tokens) * num_tokens(32, patch_size, num_prefix))


# =============================================================================
# The CPU allocator
# =============================================================================


def page_faults() -> int | None:
    """Minor page faults of this process so far (None where getrusage is missing)."""
    try:
        import resource
    except ImportError:                                      # Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def settle(step, device: torch.device, max_steps: int = 4, faults: int = 1000) -> int:
    """Repeat `step` (untimed) until one runs with almost no new page faults, at most max_steps.

    The first steps at a new peak of memory grow the heap, and fragmentation makes it
    take a few: a KD+Sal step of the small student faults 280k, 64k, 31k, 12k pages
    in its first four steps here, each costing up to 1.7 s. Training reaches the steady
    state within its first handful of steps; the bench should time that state too.
    Returns the number of steps run (0 on CUDA, where host memory is not the issue)."""
    if device.type != "cpu" or page_faults() is None:
        return 0
    for n in range(1, max_steps + 1):
        before = page_faults()
        step()
        if page_faults() - before < faults:
            return n
    return max_steps


# =============================================================================
# Timing
# =============================================================================


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_block(fn, device: torch.device, steps: int = 1) -> float:
    """Seconds per call of fn, over `steps` back-to-back calls; synchronised only at the edges."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / steps


def cpu_ticks() -> tuple[int, int] | None:
    """(busy ticks of the whole machine, ticks of this process) from /proc; None off Linux.

    The difference over a run is CPU time that other processes took: the report
    carries it, because on a shared machine it is what makes a run unreliable."""
    try:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:9]]
        with open("/proc/self/stat") as f:
            mine = f.read().rsplit(")", 1)[1].split()
        return v[0] + v[1] + v[2] + v[5] + v[6] + v[7], int(mine[11]) + int(mine[12])
    except (OSError, ValueError, IndexError):
        return None


class Timer:
    """Times one call at a time (seconds), and copes with a shared CPU.

    A call during which other processes kept more than `limit` cores busy (read from
    /proc) is disturbed: the timer waits up to `patience` seconds for the machine to
    go quiet, times the call again (at most `tries` calls) and keeps the fastest.
    Contention on a 2-core machine slows a step several-fold, so without this one
    background job makes the table meaningless. Off on CUDA and where /proc is missing.
    With --compile, inductor's compile workers are other processes too; they work only
    during the untimed warm-up steps, but they do show in the run's other_cpu_load.
    """

    def __init__(self, device: torch.device, patience: float, limit: float = 0.1, tries: int = 4):
        self.device, self.patience, self.limit, self.tries = device, patience, limit, tries
        self.check = device.type == "cpu" and cpu_ticks() is not None
        # On CUDA a measurement is 5 back-to-back calls between two synchronisations, so the
        # host can run ahead of the GPU as it does in training.
        self.block = 1 if device.type == "cpu" else 5
        self.disturbed, self.waited_s = 0, 0.0

    def other_cores(self, t0, t1, seconds: float) -> float:
        """Cores other processes kept busy; 0 below 3 clock ticks (30 ms), /proc's resolution."""
        ticks = (t1[0] - t0[0]) - (t1[1] - t0[1])
        return 0.0 if ticks < 3 else ticks / os.sysconf("SC_CLK_TCK") / max(seconds, 1e-3)

    def __call__(self, fn, retry: bool = True) -> float:
        best, tries = float("inf"), self.tries if retry and self.check else 1
        for attempt in range(tries):
            ticks0 = cpu_ticks() if self.check else None
            t = time_block(fn, self.device, self.block)
            best = min(best, t)
            if ticks0 is None or self.other_cores(ticks0, cpu_ticks(), t) <= self.limit:
                break
            self.disturbed += 1
            if attempt + 1 < tries:
                self.wait_for_quiet()
        return best

    def wait_for_quiet(self, quiet_s: int = 3) -> None:
        """Sleep until other processes have used < limit cores for quiet_s seconds in a row."""
        t_end, quiet = time.perf_counter() + self.patience, 0
        while time.perf_counter() < t_end and quiet < quiet_s:
            t0, ticks0 = time.perf_counter(), cpu_ticks()
            time.sleep(1.0)
            quiet = (quiet + 1 if self.other_cores(ticks0, cpu_ticks(), time.perf_counter() - t0)
                     < self.limit else 0)
        self.waited_s += self.patience - max(0.0, t_end - time.perf_counter())


def matmul_peak(timer: Timer, dtype: torch.dtype, n: int, reps: int) -> dict:
    """The best FLOP/s of an n x n x n torch.mm on this device: the MFU denominator."""
    a = torch.randn(n, n, device=timer.device, dtype=dtype)
    b = torch.randn(n, n, device=timer.device, dtype=dtype)
    timer(lambda: torch.mm(a, b), retry=False)          # warm-up
    best = min(timer(lambda: torch.mm(a, b)) for _ in range(reps))
    return dict(flops_per_s=2 * n ** 3 / best, dtype=str(dtype).replace("torch.", ""), n=n,
                seconds=best)


# =============================================================================
# The steps that are timed
# =============================================================================


class Cell:
    """One student + its loss for a mode: what train() builds for a run."""

    def __init__(self, model, loss_fn, opt, mode: str, cuda_graphs: bool = False):
        self.model, self.loss_fn, self.opt, self.mode = model, loss_fn, opt, mode
        self.need_attn = mode == "KD+Sal"
        self.cuda_graphs = cuda_graphs     # torch.compile(mode="reduce-overhead") on CUDA
        self.sums = None


def pipeline_step(cell: Cell, data: dict, batch, res: int, teacher_res: str) -> None:
    """One training step exactly as train()'s inner loop runs it: views, irkd.train_step, sums."""
    idx, offsets, flips = batch
    xs, xt = data_lib.make_views(data["x"][idx], offsets, flips, res, "resize",
                                 full_view=cell.mode != "CE" and teacher_res == "full")
    if cell.cuda_graphs:
        # a new step: the last step's graph outputs are done
        torch.compiler.cudagraph_mark_step_begin()
    cell.sums += irkd.train_step(cell.model, cell.loss_fn, cell.opt, xs, data["y"][idx],
                                 labels=data["y"][idx], teacher_input=xs if xt is None else xt,
                                 lr=data["lr"])


def bare_student_step(cell: Cell, x: torch.Tensor, y: torch.Tensor, autocast: dict) -> None:
    """The student alone: forward (explicit attention in KD+Sal), CE per head, backward, AdamW."""
    if cell.cuda_graphs:
        torch.compiler.cudagraph_mark_step_begin()
    with torch.autocast(**autocast):
        out = cell.model(x, return_attn=cell.need_attn)
        out = out[0] if cell.need_attn else out
        heads = out if isinstance(out, tuple) else (out,)
        loss = sum(F.cross_entropy(h, y) for h in heads)
    cell.opt.zero_grad(set_to_none=True)
    loss.backward()
    cell.opt.step()


def host_sync_free(fn) -> bool:
    """CUDA: run fn once with the sync debug mode set to error; False if it made the host wait
    for the GPU (an .item(), a blocking copy, a data-dependent shape...)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        return True
    except RuntimeError as e:
        if "synchroniz" not in str(e):
            raise
        print(f"  host synchronisation inside the step: {str(e).splitlines()[0]}", flush=True)
        return False
    finally:
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()


@torch.no_grad()
def teacher_forward(teacher, x: torch.Tensor, attn: bool, autocast: dict) -> None:
    with torch.autocast(**autocast):
        teacher(x, return_attn=attn)


def batches(sampler: data_lib.EpochSampler):
    """EpochSampler's batches, epoch after epoch."""
    while True:
        yield from sampler.epoch(crop=32)


# =============================================================================
# The run
# =============================================================================


def parse_args(argv: list[str]) -> dict:
    opts = dict(quick=True, presets="custom,tiny,small", modes=",".join(MODES), resolutions="",
                steps=0, warmup=-1, batch_size=128, patch_size=4, teacher_res="same", device="auto",
                compile=False, out="runs/bench.json", seed=0, patience=120.0,
                malloc="keep")
    for arg in argv:
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}; options look like --name=value")
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key == "full":
            key, value, eq = "quick", "false" if value in ("", "true", "1") else "true", "="
        if key not in opts:
            raise ValueError(f"unknown option --{key}; valid: --full, "
                             + ", ".join(f"--{k}" for k in opts))
        default = opts[key]
        if isinstance(default, bool):
            value = value if eq else "true"
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"--{key}={value!r}: expected true or false")
            opts[key] = value.lower() in ("true", "1", "yes")
        elif not eq:
            raise ValueError(f"--{key} needs a value: --{key}=...")
        else:
            try:
                opts[key] = type(default)(value)
            except ValueError:
                raise ValueError(f"--{key}={value!r}: expected {type(default).__name__}") from None
    presets = [p for p in opts["presets"].split(",") if p]
    modes = [m for m in opts["modes"].split(",") if m]
    for p in presets:
        if p not in irkd.PRESETS:
            raise ValueError(f"unknown preset {p!r}; valid: {', '.join(irkd.PRESETS)}")
    for m in modes:
        if m not in MODES:
            raise ValueError(f"unknown mode {m!r}; valid: {', '.join(MODES)}")
    if opts["malloc"] not in ("keep", "system"):
        raise ValueError("--malloc must be keep (keep_freed_memory) or system (glibc's defaults)")
    if opts["teacher_res"] not in ("same", "full"):
        raise ValueError("--teacher_res must be same or full")
    res = (tuple(int(r) for r in opts["resolutions"].split(",") if r) if opts["resolutions"]
           else None)
    for r in res or ():
        if not 0 < r <= 32:
            raise ValueError(f"resolution {r} is outside 1..32 (the images are 32 px)")
    plan = PLANS["quick" if opts["quick"] else "full"]
    opts.update(presets=list(dict.fromkeys(presets)),                       # no repeats
                modes=[m for m in MODES if m in modes],
                plan={p: (res or plan["presets"][p][0], opts["steps"] or plan["presets"][p][1])
                      for p in presets},
                warmup=opts["warmup"] if opts["warmup"] >= 0 else plan["warmup"],
                overhead_res=(tuple(r for r in plan["overhead_res"] if res is None or r in res)
                              or (max(res),)),
                overhead_presets=[p for p in presets if p in plan["overhead_presets"]] or presets,
                teacher_steps=opts["steps"] or plan["teacher_steps"])
    if opts["steps"] < 0 or opts["batch_size"] < 1:
        raise ValueError("--steps must be >= 0 (0 = the plan's) and --batch_size >= 1")
    for p, (resolutions, _) in opts["plan"].items():
        bad = [r for r in resolutions if r % opts["patch_size"]]
        if bad:
            raise ValueError(f"{p}: resolutions {bad} are not multiples of "
                             f"--patch_size={opts['patch_size']}; pass --resolutions=...")
    return opts


def maybe_compile(model, opts, device):
    """--compile: runs.compile_model, as train() does with compile=True."""
    return runs.compile_model(model, device) if opts["compile"] else model


def run(opts: dict) -> dict:
    malloc_tuned = opts["malloc"] == "keep" and runs.keep_freed_memory()
    device = runs.pick_device(opts["device"])
    torch.manual_seed(opts["seed"])
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    B, patch, teacher_res = opts["batch_size"], opts["patch_size"], opts["teacher_res"]
    cfg = irkd.Config(batch_size=B, patch_size=patch)
    all_res = sorted({r for res, _ in opts["plan"].values() for r in res})
    warmup = opts["warmup"]

    print(f"IRKD bench on {runs.device_name(device)}, torch {torch.__version__}, batch {B}, "
          f"patch {patch}, {'bf16 autocast' if autocast['enabled'] else 'float32'}"
          f"{', torch.compile' if opts['compile'] else ''}", flush=True)
    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    timer = Timer(device, opts["patience"])
    peak = matmul_peak(timer, peak_dtype, n=8192 if device.type == "cuda" else 2048,
                       reps=20 if device.type == "cuda" else 5)
    print(f"matmul peak: {peak['flops_per_s'] / 1e9:.1f} GFLOP/s "
          f"({peak['dtype']}, {peak['n']}^3 torch.mm)", flush=True)

    # Synthetic CIFAR-shaped data: the pipeline's cost does not depend on the pixels.
    g = torch.Generator().manual_seed(opts["seed"])
    data = dict(x=torch.randint(0, 256, (NUM_IMAGES, 3, 32, 32), generator=g,
                                dtype=torch.uint8).to(device),
                y=torch.randint(0, 10, (NUM_IMAGES,), generator=g).to(device), lr=cfg.lr)
    sampler = data_lib.EpochSampler(NUM_IMAGES, B, opts["seed"], device)
    stream = batches(sampler)
    kd_modes = [m for m in opts["modes"] if m != "CE"]
    teacher = None
    if kd_modes:
        teacher = (irkd.build_model(TEACHER_PRESET, patch_size=patch).to(device).eval()
                   .requires_grad_(False))
        bare_teacher = maybe_compile(teacher, opts, device)           # timed alone below
    t_res = (lambda r: 32) if teacher_res == "full" else (lambda r: r)   # the teacher's input size
    # Ready-made inputs for the bare pieces (student and teacher), at every size they see.
    fixed = {r: data_lib.resize(data_lib.normalize(data["x"][:B]), r)
             for r in set(all_res) | {t_res(r) for r in all_res}}

    # The teacher's forward, fused (KD) and explicit (KD+Sal), at every resolution it will see.
    teacher_s = {}
    if teacher is not None:
        attn_flags = [False] + ([True] if "KD+Sal" in opts["modes"] else [])
        for r in sorted({t_res(r) for r in all_res}):
            times = {a: [] for a in attn_flags}
            for i in range(warmup + opts["teacher_steps"]):
                for a in attn_flags:
                    t = timer(lambda: teacher_forward(bare_teacher, fixed[r], a, autocast),
                              retry=i >= warmup)
                    if i >= warmup:
                        times[a].append(t)
            teacher_s[r] = {a: min(ts) for a, ts in times.items()}
            print(f"teacher {TEACHER_PRESET} forward {r:2d}px: "
                  + ", ".join(f"{'explicit' if a else 'fused'} {B / s:7.1f} img/s"
                              for a, s in teacher_s[r].items()),
                  flush=True)

    train, overhead, sync_free, settled, memory = {}, {}, {}, {}, {}
    for preset in opts["presets"]:
        resolutions, steps = opts["plan"][preset]
        if device.type == "cuda":             # the GPU peak is this preset's own
            torch.cuda.reset_peak_memory_stats(device)
        cells = {}
        students = {}
        for mode in opts["modes"]:
            kd = mode != "CE"
            # KD and KD+Sal train the same kind of student (with a dist token)
            if kd not in students:
                torch.manual_seed(opts["seed"])
                model = irkd.build_model(preset, patch_size=patch, distill_token=kd).to(device)
                students[kd] = (maybe_compile(model, opts, device), irkd.make_optimizer(model, cfg))
            model, opt = students[kd]
            loss_fn = irkd.IRKDLoss(teacher if kd else None, alpha=cfg.alpha,
                                    temperature=cfg.temperature,
                                    gamma=cfg.gamma if mode == "KD+Sal" else 0.0)
            # the teacher's forward that runs (logits, or logits and rollout), as build() does
            loss_fn.teacher_forward = (maybe_compile(loss_fn.teacher_forward, opts, device)
                                       if kd else None)
            cells[mode] = Cell(model, loss_fn, opt, mode,
                               cuda_graphs=opts["compile"] and device.type == "cuda")
        for cell in cells.values():
            cell.model.train()
            cell.loss_fn.train()
            cell.sums = torch.zeros(5, device=device)
        train[preset] = {m: {} for m in opts["modes"]}
        # Largest resolution first: its first steps take the process to this preset's peak
        # memory, where the mode with the most (the last of CE, KD, KD+Sal) settles the heap.
        order = sorted(resolutions, reverse=True)
        for r in order:
            with_bare = r in opts["overhead_res"] and preset in opts["overhead_presets"]
            y_fixed = data["y"][:B]
            full_t = {m: [] for m in cells}
            bare_t = {m: [] for m in cells}
            warm = warmup
            if warmup and r == order[0]:
                biggest = cells[max(cells, key=MODES.index)]
                settled[preset] = settle(
                    lambda: pipeline_step(biggest, data, next(stream), r, teacher_res), device)
            for i in range(warm + steps):   # rounds interleave the modes and the bare pieces
                for mode, cell in cells.items():
                    t = timer(lambda: pipeline_step(cell, data, next(stream), r, teacher_res),
                              retry=i >= warm)
                    if i >= warm:
                        full_t[mode].append(t)
                    if with_bare:
                        t = timer(lambda: bare_student_step(cell, fixed[r], y_fixed, autocast),
                                  retry=i >= warm)
                        if i >= warm:
                            bare_t[mode].append(t)
            if device.type == "cuda" and r == order[0]:   # once per preset and mode, warmed up
                for mode, cell in cells.items():
                    batch = next(stream)          # an epoch start copies to the device
                    sync_free.setdefault(preset, {})[mode] = host_sync_free(
                        lambda: pipeline_step(cell, data, batch, r, teacher_res))
            for mode in cells:
                s = min(full_t[mode])
                flops = step_flops(preset, mode, r, patch, t_res(r)) * B
                train[preset][mode][str(r)] = dict(
                    step_s=s, step_s_median=statistics.median(full_t[mode]),
                    steps=len(full_t[mode]), step_s_all=full_t[mode],
                    images_per_s=B / s, tokens=num_tokens(r, patch, 1 if mode == "CE" else 2),
                    gflop_per_step=flops / 1e9, flops_per_s=flops / s,
                    mfu=flops / s / peak["flops_per_s"])
                if with_bare:
                    student = min(bare_t[mode])
                    tch = teacher_s[t_res(r)][mode == "KD+Sal"] if mode != "CE" else 0.0
                    overhead.setdefault(preset, {}).setdefault(mode, {})[str(r)] = dict(
                        full_step_s=s, bare_student_s=student, bare_teacher_s=tch,
                        ratio=s / (student + tch))
            print(f"{preset:6s} {r:2d}px: " + ", ".join(
                f"{m} {train[preset][m][str(r)]['images_per_s']:7.1f} img/s" for m in cells),
                flush=True)
        by_res = lambda d: dict(sorted(d.items(), key=lambda kv: int(kv[0])))  # noqa: E731
        train[preset] = {m: by_res(v) for m, v in train[preset].items()}
        if preset in overhead:
            overhead[preset] = {m: by_res(v) for m, v in overhead[preset].items()}
        for cell in cells.values():
            if not torch.isfinite(cell.sums).all():
                raise FloatingPointError(f"{preset}: a non-finite loss in the benchmark steps")
        # the process's resident peak so far (a CPU heap is not given back, so a preset after
        # a bigger one shows the bigger one's), and on CUDA this preset's tensors
        memory[preset] = runs.peak_memory_mib(device)

    rep = summarise(opts, device, peak, teacher_s, train, overhead)
    rep["meta"].update(disturbed_measurements=timer.disturbed,
                       waited_for_quiet_s=round(timer.waited_s, 1),
                       malloc="keep_freed_memory" if malloc_tuned else "system")
    # CUDA only: {preset: {mode: no host sync in the step}}
    rep["host_sync_free"] = sync_free or None
    rep["meta"]["settle_steps"] = settled           # untimed steps until the heap stopped growing
    rep["peak_memory_mib"] = memory                 # {preset: {rss[, cuda]}}, after its cells
    return rep


def summarise(opts, device, peak, teacher_s, train, overhead) -> dict:
    """The JSON report: raw cells plus the three target ratios and MFU at 32 px."""
    patch = opts["patch_size"]
    curriculum, sal = {}, {}
    for preset, by_mode in train.items():
        for mode, by_res in by_mode.items():
            if all(str(r) in by_res for r in irkd.RESOLUTIONS):
                ratio = (sum(by_res[str(r)]["step_s"] for r in irkd.RESOLUTIONS)
                         / (6 * by_res["32"]["step_s"]))
                ideal = ideal_curriculum_ratio(irkd.RESOLUTIONS, patch, 1 if mode == "CE" else 2)
                curriculum.setdefault(preset, {})[mode] = dict(ratio=ratio, ideal=ideal,
                                                               rel_err=ratio / ideal - 1)
        if "KD" in by_mode and "KD+Sal" in by_mode:
            common = [r for r in by_mode["KD"] if r in by_mode["KD+Sal"]]
            per_res = {r: by_mode["KD+Sal"][r]["step_s"] / by_mode["KD"][r]["step_s"]
                       for r in common}
            summed = (sum(by_mode["KD+Sal"][r]["step_s"] for r in common)
                      / sum(by_mode["KD"][r]["step_s"] for r in common))
            sal[preset] = dict(per_res=per_res, summed=summed)

    # Headline numbers: the worst case over everything measured.
    worst_overhead = max((v["ratio"], f"{p} {m} {r}px") for p, bm in overhead.items()
                         for m, br in bm.items() for r, v in br.items()) if overhead else None
    worst_sal = max((v, f"{p} {r}px") for p, s in sal.items()
                    for r, v in s["per_res"].items()) if sal else None
    worst_cl = max((abs(v["rel_err"]), v["rel_err"], v["ratio"], v["ideal"], f"{p} {m}")
                   for p, bm in curriculum.items() for m, v in bm.items()) if curriculum else None
    targets = {}
    if worst_overhead:
        targets["pipeline_overhead"] = dict(value=worst_overhead[0], where=worst_overhead[1],
                                            target=TARGETS["pipeline_overhead"],
                                            met=worst_overhead[0] <= TARGETS["pipeline_overhead"])
    if worst_sal:
        targets["sal_over_kd"] = dict(value=worst_sal[0], where=worst_sal[1],
                                      target=TARGETS["sal_over_kd"],
                                      met=worst_sal[0] <= TARGETS["sal_over_kd"])
    if worst_cl:
        targets["curriculum"] = dict(value=worst_cl[2], ideal=worst_cl[3], rel_err=worst_cl[1],
                                     where=worst_cl[4],
                                     target=TARGETS["curriculum_rel_err"],
                                     met=abs(worst_cl[1]) <= TARGETS["curriculum_rel_err"])
    mfu_32 = {p: {m: by_mode[m]["32"]["mfu"] for m in by_mode if "32" in by_mode[m]}
              for p, by_mode in train.items()}
    return dict(
        meta=dict(device=str(device), device_name=runs.device_name(device), torch=torch.__version__,
                  python=platform.python_version(), threads=torch.get_num_threads(),
                  batch_size=opts["batch_size"], patch_size=patch, teacher=TEACHER_PRESET,
                  teacher_res=opts["teacher_res"], quick=opts["quick"], compile=opts["compile"],
                  warmup=opts["warmup"],
                  plan={p: dict(resolutions=list(r), steps=s)
                        for p, (r, s) in opts["plan"].items()},
                  precision="bf16 autocast" if device.type == "cuda" else "float32",
                  timing="best of the timed steps (seconds per step)",
                  date=time.strftime("%Y-%m-%d %H:%M:%S")),
        peak=peak,
        teacher_forward={str(r): dict(images_per_s=opts["batch_size"] / v[False],
                                      **({"explicit_images_per_s": opts["batch_size"] / v[True]}
                                         if True in v else {}))
                         for r, v in teacher_s.items()},
        train=train, overhead=overhead, sal_over_kd=sal, curriculum=curriculum, mfu_32=mfu_32,
        targets=targets,
        ideal_curriculum_ratio=ideal_curriculum_ratio(irkd.RESOLUTIONS, patch, 2))


def format_report(rep: dict) -> str:
    m = rep["meta"]
    res = sorted({int(r) for bm in rep["train"].values() for br in bm.values() for r in br})
    lines = [f"IRKD bench: {m['device_name']}, torch {m['torch']}, batch {m['batch_size']}, "
             f"patch {m['patch_size']}, "
             f"{m['precision']}{', torch.compile' if m['compile'] else ''}, malloc {m['malloc']}; "
             f"matmul peak {rep['peak']['flops_per_s'] / 1e9:.1f} GFLOP/s ({rep['peak']['dtype']})",
             "",
             "training images/s (best step; KD modes include the ViT-Small teacher's forward)"]
    head = f"{'preset':7s}{'mode':8s}" + "".join(f"{str(r) + 'px':>8s}" for r in res)
    lines.append(head + f"{'CL cost':>9s}{'ideal':>7s}{'GFLOP/s':>9s}{'MFU':>7s}")
    for preset, by_mode in rep["train"].items():
        for mode, by_res in by_mode.items():
            row = f"{preset:7s}{mode:8s}" + "".join(
                f"{by_res[str(r)]['images_per_s']:8.1f}" if str(r) in by_res else f"{'-':>8s}"
                for r in res)
            cl = rep["curriculum"].get(preset, {}).get(mode)
            row += f"{cl['ratio']:9.3f}{cl['ideal']:7.3f}" if cl else f"{'-':>9s}{'-':>7s}"
            top = by_res.get("32") or by_res[str(max(int(r) for r in by_res))]
            row += f"{top['flops_per_s'] / 1e9:9.1f}{100 * top['mfu']:6.1f}%"
            lines.append(row)
    if rep["teacher_forward"]:
        tf = rep["teacher_forward"]
        lines.append(f"{'teacher':7s} {'fwd':7s}" + "".join(
            f"{tf[str(r)]['images_per_s']:8.1f}" if str(r) in tf else f"{'-':>8s}" for r in res))
        if any("explicit_images_per_s" in v for v in tf.values()):
            lines.append(f"{'teacher':7s} {'fwd+att':7s}" + "".join(
                f"{tf[str(r)]['explicit_images_per_s']:8.1f}" if str(r) in tf else f"{'-':>8s}"
                for r in res))
    lines.append("(GFLOP/s and MFU at 32 px, or the largest resolution measured; "
                 "MFU = fraction of the matmul peak)")
    if rep["overhead"]:
        lines += ["",
                  "pipeline overhead: full step / (bare student fwd+bwd+step + bare teacher fwd)"]
        ores = sorted({int(r) for bm in rep["overhead"].values() for br in bm.values() for r in br})
        lines.append(f"{'preset':7s}{'mode':8s}" + "".join(f"{str(r) + 'px':>8s}" for r in ores))
        for preset, by_mode in rep["overhead"].items():
            for mode, by_res in by_mode.items():
                lines.append(f"{preset:7s}{mode:8s}" + "".join(
                    f"{by_res[str(r)]['ratio']:8.3f}" if str(r) in by_res else f"{'-':>8s}"
                    for r in ores))
    if rep["sal_over_kd"]:
        lines += ["", "KD+Sal step / KD step"]
        lines.append(f"{'preset':15s}" + "".join(f"{str(r) + 'px':>8s}" for r in res)
                     + f"{'summed':>9s}")
        for preset, s in rep["sal_over_kd"].items():
            lines.append(f"{preset:15s}" + "".join(
                f"{s['per_res'][str(r)]:8.3f}" if str(r) in s["per_res"] else f"{'-':>8s}"
                for r in res)
                + f"{s['summed']:9.3f}")
    if rep["targets"]:
        lines += ["", "targets (worst case over what was measured):"]
        t = rep["targets"]
        if "pipeline_overhead" in t:
            v = t["pipeline_overhead"]
            lines.append(f"  pipeline overhead     {v['value']:.3f}  <= {v['target']:.2f}   "
                         f"{'met' if v['met'] else 'NOT met'}  ({v['where']})")
        if "sal_over_kd" in t:
            v = t["sal_over_kd"]
            lines.append(f"  KD+Sal / KD step      {v['value']:.3f}  <= {v['target']:.2f}   "
                         f"{'met' if v['met'] else 'NOT met'}  ({v['where']})")
        if "curriculum" in t:
            v = t["curriculum"]
            lines.append(f"  curriculum cost       {v['value']:.3f}  ideal {v['ideal']:.3f} "
                         f"({100 * v['rel_err']:+.1f} %, within {100 * v['target']:.0f} %)   "
                         f"{'met' if v['met'] else 'NOT met'}  ({v['where']})")
    if rep.get("peak_memory_mib"):
        lines += ["", f"peak memory after each preset's steps (batch {m['batch_size']}; RSS: the "
                  "process's peak so far, the teacher included; CUDA: that preset's tensors)"]
        for preset, mem in rep["peak_memory_mib"].items():
            lines.append(f"  {preset:7s}" + "".join(f"  {k} {v / 1024:6.2f} GiB"
                                                     for k, v in mem.items()))
    if rep.get("host_sync_free"):
        bad = [f"{p} {mo}" for p, bm in rep["host_sync_free"].items()
               for mo, ok in bm.items() if not ok]
        lines += ["",
                  "host synchronisation inside the step: " + (", ".join(bad) if bad else "none")]
    other = m.get("other_cpu_load")
    lines += ["", f"{m.get('wall_s', 0):.0f} s"
              + (f"; other processes kept {other:.2f} cores busy on average"
                 if other is not None else "")
              + (f"; retried {m['disturbed_measurements']} measurement(s) they disturbed, "
                 f"after waiting {m['waited_for_quiet_s']:.0f} s for quiet"
                 if m.get("disturbed_measurements") else "")]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    try:
        opts = parse_args(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0, ticks0 = time.perf_counter(), cpu_ticks()
    rep = run(opts)
    wall, ticks1 = time.perf_counter() - t0, cpu_ticks()
    rep["meta"].update(command="python bench.py " + " ".join(argv), wall_s=round(wall, 1))
    if ticks0 and ticks1:
        other = (ticks1[0] - ticks0[0]) - (ticks1[1] - ticks0[1])
        rep["meta"]["other_cpu_load"] = round(max(0, other) / os.sysconf("SC_CLK_TCK") / wall, 2)
    print()
    print(format_report(rep))
    out = opts["out"]
    if os.path.dirname(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
    runs.write_json(out, rep)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
