"""Figures for IRKD runs: training curves, accuracy vs resolution, saliency maps, paper table.

    python plots.py RUN_DIR [RUN_DIR ...] [--out DIR]

    python plots.py runs/quick/exp1b runs/quick/exp1a runs/quick/teacher_quick_p4 --out docs/figures

For every run directory (written by train.train, see its docstring):

    curves_NAME.png     accuracy and loss terms per epoch, stages marked        (plot_curves)
    saliency_NAME.png   teacher / student attention-rollout maps per stage end  (plot_saliency)

and across all of them (runs that have results.json only):

    resolution.png      test accuracy at every input resolution 12..32          (plot_resolution)
    table.png           paper Table 1 vs this code, one bar pair per cell       (plot_table)

resolution.png and efficiency.png draw the seeds of one arm (NAME, NAME-seed1, ...) as one
line, their mean, with a band from the lowest to the highest seed. Runs that share a name
(one experiment from two checkouts) are told apart by the nearest
parent folder that differs: curves_exp1b_base.png, "exp1b [base]" in legends and labels.

--out defaults to a `figures/` folder beside the first run directory
(runs/quick/exp1b -> runs/quick/figures/), so figures stay with the runs they
show and, like runs/, out of git. A run that is still training (log.jsonl but no
results.json yet) gets its curves and saliency maps; a missing directory or an
unreadable file stops the script with one line saying which command makes it
(exit code 2).

The figure functions use matplotlib's Figure API directly (no pyplot), so they
draw off-screen with Agg and never touch the backend of a notebook that imports
them; main() also selects Agg for the CLI.
"""
from __future__ import annotations

import json
import os
import re
import sys
import textwrap

import matplotlib
import torch
import torch.nn.functional as F
from matplotlib.cm import ScalarMappable
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator

import data as data_lib
import experiments
import irkd
import study
from runs import arm_name

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DPI = 100
LOSS_STYLE = {  # the total objective, then its parts as logged (unweighted; see irkd.IRKDLoss)
    "loss": dict(color="black", label="total loss"),
    "ce": dict(color="C0", label="CE (cls head)"),
    "kd": dict(color="C2", label="KD (dist head)"),
    "sal": dict(color="C3", label="saliency MSE"),
}


# =============================================================================
# Reading a run directory
# =============================================================================

class RunError(Exception):
    """A run directory that cannot be plotted; the message is one line that says what to run."""


def make_command(run_dir: str, quick: bool | None = None) -> str:
    """The command that writes run_dir, e.g. `python experiments.py exp1b --quick`.

    The experiment is the directory's name; quick mode is read from the config, or
    guessed from the runs/quick/ parent. The quick teacher (teacher_quick_pN) is the
    teacher_small_pN experiment in quick mode.
    """
    run_dir = os.path.normpath(run_dir)
    name, parent = os.path.basename(run_dir), os.path.dirname(run_dir) or "."
    if quick is None:
        quick = os.path.basename(parent) == "quick"
    if name.startswith("teacher_quick_p"):
        name, quick = name.replace("teacher_quick_p", "teacher_small_p"), True
    # A name outside the table came from some experiment with --name=NAME.
    cmd = f"python experiments.py {name}" if name in experiments.EXPERIMENTS else \
        f"python experiments.py EXPERIMENT --name={name}"
    cmd += " --quick" if quick else ""
    default_parent = os.path.join("runs", "quick") if quick else "runs"
    if os.path.relpath(parent) != default_parent:
        cmd += f" --out={parent}"   # --out replaces the whole parent, quick or not
    return cmd


def read_json(path: str, run_dir: str, quick: bool | None = None) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise RunError(f"{path} is truncated or not valid JSON ({e.msg} at line {e.lineno}): "
                       f"re-run `{make_command(run_dir, quick)}` to write it again") from None
    except OSError as e:
        raise RunError(f"cannot read {path} ({e.strerror})") from None


def read_log(path: str, run_dir: str, quick: bool | None) -> list[dict]:
    """log.jsonl -> one dict per finished epoch. A last line without its newline is one
    being written right now (the run is training): it is dropped, not an error."""
    with open(path) as f:
        text = f.read()
    lines = text.splitlines()
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) and not text.endswith("\n"):
                break
            raise RunError(f"{path} line {i} is truncated or not valid JSON: train the run again "
                           f"with `{make_command(run_dir, quick)} --resume=false`") from None
        missing = [k for k in ("epoch", "train_acc", "val_acc", "loss") if k not in row]
        if missing:
            raise RunError(f"{path} line {i} lacks {', '.join(missing)}: "
                           f"it was not written by train.train")
        rows.append(row)
    if not rows:
        raise RunError(f"{path} has no finished epoch yet: wait for the first epoch of "
                       f"`{make_command(run_dir, quick)}`")
    return rows


def load_run(run_dir: str) -> dict:
    """What plots need from runs/NAME/ -> dict(dir, name, config, log, results, saliency, notes).

    Required: the directory and a log.jsonl with at least one epoch. Optional:
    config.json, results.json (absent while training), saliency.pt (absent in runs
    made before it existed); what is absent is listed in `notes`. Raises RunError.
    """
    run_dir = os.path.normpath(run_dir)
    name = os.path.basename(run_dir)
    if not os.path.isdir(run_dir):
        what = "is a file, not a run directory" if os.path.exists(run_dir) else "does not exist"
        raise RunError(f"{run_dir} {what}: run `{make_command(run_dir)}` first")
    path = lambda f: os.path.join(run_dir, f)  # noqa: E731
    config = read_json(path("config.json"), run_dir) if os.path.exists(path("config.json")) else {}
    quick = config.get("quick")
    if not os.path.exists(path("log.jsonl")):
        raise RunError(f"{run_dir} has no log.jsonl: run `{make_command(run_dir, quick)}` first")
    run = dict(dir=run_dir, name=config.get("name", name), config=config, notes=[],
               log=read_log(path("log.jsonl"), run_dir, quick), results=None, saliency=None)
    if os.path.exists(path("results.json")):
        run["results"] = read_json(path("results.json"), run_dir, quick)
        missing = [k for k in ("test_acc", "test_acc_by_res") if k not in run["results"]]
        if missing:
            raise RunError(f"{path('results.json')} lacks {', '.join(missing)}: re-run "
                           f"`{make_command(run_dir, quick)}` to write it again")
    else:
        run["notes"].append(f"{run_dir} has no results.json yet (still training, or stopped; "
                            f"`{make_command(run_dir, quick)}` resumes a stopped run)")
    if os.path.exists(path("saliency.pt")):
        try:   # whatever a cut-off or foreign file raises (unpickling, zip, key errors)
            run["saliency"] = torch.load(path("saliency.pt"), map_location="cpu",
                                         weights_only=False)
            run["saliency"]["stages"][0]["student"]
        except Exception as e:
            raise RunError(f"{path('saliency.pt')} is truncated or not a saliency snapshot "
                           f"({type(e).__name__}): delete it to plot the rest, or train the run "
                           f"again with "
                           f"`{make_command(run_dir, quick)} --resume=false`") from None
    else:
        run["notes"].append(f"{run_dir} has no saliency.pt (irkd.train writes it at every stage "
                            f"end): no saliency figure")
    return run


def setup_label(run: dict) -> str:
    """'KD+CL+Sal', 'teacher', ...: the table's name for a run, else read from its config."""
    if run["name"] in experiments.SETUP:
        return experiments.SETUP[run["name"]]
    if run["name"].startswith("teacher_"):
        return "teacher"
    c = run["config"]
    flags = [f for f, on in (("KD", c.get("kd")), ("CL", c.get("cl")), ("Sal", c.get("sal"))) if on]
    return "+".join(flags) or "CE"


def is_quick(run: dict) -> bool:
    return bool((run["results"] or {}).get("quick", run["config"].get("quick", False)))


def is_teacher(run: dict) -> bool:
    return run["name"].startswith("teacher_") or setup_label(run).startswith("teacher")


def run_labels(runs: list[dict]) -> list[str]:
    """Each run's name; runs that share a name (one experiment from two checkouts) also get
    the nearest parent folder that tells them apart: "teacher_quick_p4 [base]"."""
    def parents(run):   # nearest first
        return os.path.abspath(run["dir"]).split(os.sep)[:-1][::-1]
    labels = []
    for run in runs:
        twins = [parents(r) for r in runs if r["name"] == run["name"]]
        label, mine = run["name"], parents(run)
        for depth in range(len(mine)):
            if len({tuple(p[depth:depth + 1]) for p in twins}) > 1:
                label += f" [{mine[depth]}]"
                break
        labels.append(label)
    return labels


def seed_groups(runs: list[dict]) -> list[tuple[str, list[dict]]]:
    """Runs grouped by arm, in order of first appearance: NAME and NAME-seedN
    (runs.seeded) in one folder are one arm, which the cross-run figures draw as the
    mean over its seeds with a min-max band. Label: the arm's name (with run_labels' folder
    tag for runs that share a name)."""
    groups: dict[tuple, tuple[str, list[dict]]] = {}
    for run, label in zip(runs, run_labels(runs)):
        key = (arm_name(run["name"]), os.path.dirname(os.path.abspath(run["dir"])))
        groups.setdefault(key, (re.sub(r"-seed\d+", "", label), []))[1].append(run)
    return list(groups.values())


def seed_note(runs: list[dict]) -> str:
    """What a legend says of an arm's line: '' for one run, else how many seeds it averages."""
    return "" if len(runs) == 1 else f"mean of {len(runs)} seeds, band: min-max"


def seed_band(series: list[list[float]]) -> tuple[list[float], list[float], list[float]]:
    """Per position over the seeds' series (equal lengths): (mean, min, max)."""
    columns = list(zip(*series, strict=True))
    return ([sum(c) / len(c) for c in columns], [min(c) for c in columns],
            [max(c) for c in columns])


# =============================================================================
# Figure 1: training curves
# =============================================================================

def mark_stages(ax, rows: list[dict]) -> None:
    """A dotted line where each curriculum stage begins; its resolution above the panel.

    Epochs are points at x = epoch, so a stage that starts at epoch e begins at e - 0.5.
    """
    stages = {}
    for r in rows:
        stages.setdefault(r.get("stage", 0), []).append(r)
    for i, (stage, rs) in enumerate(sorted(stages.items())):
        first, last = rs[0]["epoch"], rs[-1]["epoch"]
        if i > 0:
            ax.axvline(first - 0.5, color="0.5", lw=0.8, ls=":", zorder=0)
        if "res" in rs[0]:
            # x in data units, y just above the axes: the labels never cover a curve.
            ax.text((first + last) / 2, 1.01, f"{rs[0]['res']} px",
                    transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8,
                    color="0.3")


def plot_curves(run_dir: str, out_path: str) -> str:
    """Train / validation accuracy (left) and every logged loss term (right) per epoch."""
    run = load_run(run_dir)
    rows = run["log"]
    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(10, 3.8), dpi=DPI)
    ax_acc, ax_loss = fig.subplots(1, 2)

    # Train accuracy is the cls head on the augmented batches of the stage's resolution;
    # validation is the reported head (avg of cls and dist with a distillation token).
    head = "avg" if "avg" in rows[-1].get("val_heads", {}) else "cls"
    ax_acc.plot(epochs, [r["train_acc"] for r in rows], "o-", ms=3, color="C0",
                label="train (cls head)")
    ax_acc.plot(epochs, [r["val_acc"] for r in rows], "s-", ms=3, color="C1",
                label=f"validation ({head} head)")
    ax_acc.set_ylabel("top-1 accuracy (%)")

    # Only the terms this run optimises: the teacher and CE runs log kd = sal = 0, and
    # their total loss *is* the CE, so it is drawn once.
    cfg = run["config"]
    terms = ["loss", "ce"] + [k for k in ("kd", "sal")
                              if cfg.get(k, any(r.get(k, 0) for r in rows))]
    terms = [k for k in terms if all(k in r for r in rows)]
    if terms == ["loss", "ce"]:
        terms = ["ce"]
    for k in terms:
        style = dict(LOSS_STYLE[k])
        if terms == ["ce"]:
            style["label"] = "CE (= total loss)"
        elif k == "loss":   # spell out the mix, irkd.IRKDLoss's formula with this run's weights
            a, g = cfg.get("alpha", 0.5), cfg.get("gamma", 0.8)
            style["label"] = (f"total = {1 - a:g}·CE + {a:g}·KD"
                              + (f" + {g:g}·sal" if "sal" in terms else ""))
        ax_loss.plot(epochs, [r[k] for r in rows], "o-", ms=3, **style)
    values = [r[k] for r in rows for k in terms if r.get(k, 0) > 0]
    if values and max(values) / min(values) > 20:
        ax_loss.set_yscale("log")   # the saliency MSE is ~100x smaller than the CE
        ax_loss.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))   # 0.1, not 10^-1
    ax_loss.set_ylabel("training loss (epoch mean)")

    for ax in (ax_acc, ax_loss):
        mark_stages(ax, rows)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(epochs[0] - 0.6, epochs[-1] + 0.6)
        ax.grid(alpha=0.3)
        # Below the panel: a legend inside would cover the curves somewhere.
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.19), ncols=2,
                  frameon=False)
    title = f"{run['name']} ({setup_label(run)})"
    if is_quick(run):
        title += ", quick mode"
    if run["results"] is None:
        title += f": still training or stopped, {len(rows)} epochs logged, no results.json yet"
    else:
        title += f": test {run['results']['test_acc']:.2f} % at 32 px"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_path, dpi=DPI)
    return out_path


# =============================================================================
# Figure 2: accuracy at every test resolution
# =============================================================================

# Students: ten colours with seven markers (no two runs of the first 70 look alike);
# teachers: greys, dashed, with markers of their own, so the teachers differ from each other.
STUDENT_MARKERS = "osDvP<X"
TEACHER_STYLES = [dict(color="0.1", ls="--", marker="^"), dict(color="0.45", ls="-.", marker="v"),
                  dict(color="0.65", ls=":", marker=">"), dict(color="0.3", ls=(0, (6, 2, 1, 2)),
                                                                marker="<")]


def plot_resolution(run_dirs: list[str], out_path: str) -> str:
    """Test accuracy of each run's reported head at 12..32 px; teachers grey and dashed.

    This is the method's point: the curriculum should keep a student accurate on
    inputs below 32 px, where a model trained at 32 px only is expected to fall off.
    The seeds of one arm are one line (seed_groups): their mean, with a min-max band.
    Every line has its own colour / grey, marker and (teachers) dash; with more than six
    runs the figure grows, and the legend is outside the axes, right.
    """
    runs = [r for r in map(load_run, run_dirs) if r["results"] is not None]
    if not runs:
        raise RunError("no run has a results.json yet: nothing to plot accuracy vs resolution from")
    groups = seed_groups(runs)
    many = len(groups) > 6
    fig = Figure(figsize=(10, 5.2) if many else (8, 4), dpi=DPI)
    ax = fig.subplots()
    students = teachers = 0
    drawn = {}   # values -> label: a line drawn exactly over an earlier one says so
    for label, rs in groups:
        # the resolutions every seed was tested at, and the mean / min / max over seeds
        accs = [r["results"]["test_acc_by_res"] for r in rs]
        xs = sorted(set.intersection(*(set(map(int, a)) for a in accs)))
        mean, lo, hi = seed_band([[a[str(x)] for x in xs] for a in accs])
        notes = [f"{rs[0]['results'].get('test_head', 'cls')} head", seed_note(rs)]
        head = f"{label} ({'; '.join(n for n in notes if n)})"
        if tuple(mean) in drawn:
            head += f"\n  same values as {drawn[tuple(mean)]}, drawn over it"
        drawn.setdefault(tuple(mean), label)
        if is_teacher(rs[0]):
            style = dict(TEACHER_STYLES[teachers % len(TEACHER_STYLES)], zorder=2)
            teachers += 1
        else:
            style = dict(color=f"C{students % 10}",
                         marker=STUDENT_MARKERS[students % len(STUDENT_MARKERS)], zorder=3)
            students += 1
        line, = ax.plot(xs, mean, ms=6, lw=1.4, label=head, **style)
        if len(rs) > 1:
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xticks(irkd.RESOLUTIONS)
    ax.set_xlabel("test image resolution (px; 32 = native CIFAR-10)")
    ax.set_ylabel("top-1 test accuracy (%)")
    ax.grid(alpha=0.3)
    quick = [r for r in runs if is_quick(r)]
    title = "Test accuracy vs input resolution"
    if quick:
        n = quick[0]["results"].get("test_images")
        title += f" (quick mode{f', {n} test images' if n else ''})"
    ax.set_title(title, fontsize=10)
    # Outside the axes, right: the lines can cross anywhere.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
              ncols=2 if len(groups) > 16 else 1, handlelength=3)
    fig.savefig(out_path, dpi=DPI, bbox_inches="tight")
    return out_path


# =============================================================================
# Figure 3: saliency maps through the curriculum
def efficiency_points(run: dict) -> list[tuple[float, float, float]]:
    """(cumulative training seconds, cumulative compute in 32-px epochs, cls test accuracy at
    32 px) after each tested epoch and at the end. Seconds are the epochs' step time
    (log.jsonl), without validation or tests; an epoch at r px counts tokens(r) / tokens(32)
    of a 32-px epoch (tokens = patches + prefix), the measure the study's "equal compute"
    comparisons use."""
    cfg = run["config"]
    patch, prefix = cfg.get("patch_size", 4), 2 if cfg.get("kd") else 1
    tokens = lambda r: (r // patch) ** 2 + prefix  # noqa: E731
    at_epoch, t, c, points = run["results"].get("at_epoch") or {}, 0.0, 0.0, []
    for row in run["log"]:
        t += row["seconds"]
        c += tokens(row["res"]) / tokens(32)
        if str(row["epoch"]) in at_epoch:
            points.append((t, c, at_epoch[str(row["epoch"])]["cls"]))
    last = study.final_heads(run["results"])["cls"]["32"]
    return points + [(t, c, last)]


def plot_efficiency(run_dirs: list[str], out_path: str) -> str:
    """Test accuracy (cls head, 32 px) against cumulative compute (32-px epoch equivalents, by
    token count) and against cumulative training seconds, one line per arm (seed_groups: the
    mean over its seeds, with a min-max band).

    The curriculum's claim is efficiency: at equal training cost, is it ahead? Compute is
    the machine-independent measure; seconds are what a user waits, but runs that shared a
    machine have noisy seconds (the study ran two at a time, one thread each).
    """
    runs = [r for r in map(load_run, run_dirs) if r["results"] and r["results"].get("at_epoch")]
    if not runs:
        raise RunError("no run tested after its epochs (test_epochs): nothing to plot")
    fig = Figure(figsize=(12, 4), dpi=DPI)
    by_compute, by_time = fig.subplots(1, 2, sharey=True)
    i = 0
    for label, rs in seed_groups(runs):
        points = [efficiency_points(r) for r in rs]
        # seeds tested after the same epochs share their compute: one line, mean and band;
        # otherwise (different test_epochs) every seed is a line of its own
        arms = ([(f"{label} ({seed_note(rs)})" if len(rs) > 1 else label, points)]
                if len({len(p) for p in points}) == 1
                else [(r["name"], [p]) for r, p in zip(rs, points)])
        for name, pts in arms:
            (seconds, _, _), (compute, _, _), (acc, lo, hi) = (
                seed_band([[p[k] for p in run_pts] for run_pts in pts]) for k in range(3))
            style = dict(marker="o", ms=3, color=f"C{i % 10}",
                         ls="-" if rs[0]["config"].get("cl") else "--", label=name)
            i += 1
            for ax, xs in ((by_compute, compute), (by_time, [v / 60 for v in seconds])):
                ax.plot(xs, acc, **style)
                if len(pts) > 1:
                    ax.fill_between(xs, lo, hi, color=style["color"], alpha=0.15, lw=0)
    by_compute.set_xlabel("cumulative compute (32-px epochs, by token count)")
    by_time.set_xlabel("cumulative training time (min; steps only; a shared machine)")
    by_compute.set_ylabel("top-1 test accuracy at 32 px (%, cls head)")
    for ax in (by_compute, by_time):
        ax.grid(alpha=0.3)
    fig.suptitle("Accuracy vs training cost (solid: curriculum; dashed: fixed 32 px)", fontsize=10)
    by_time.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.savefig(out_path, dpi=DPI, bbox_inches="tight")
    return out_path


# =============================================================================

def upsample_map(m: torch.Tensor) -> torch.Tensor:
    """(g, g) rollout map -> (32, 32), in units of the map's own mean.

    Raw rollout values shrink with the number of patches (a 3x3 map at 12 px holds
    ~0.1 per patch, an 8x8 map at 32 px ~0.015), so maps of different stages are
    only comparable relative to their mean: 1 = an average patch, 2 = twice that.
    Bilinear (not bicubic) upsampling: smooth and never overshoots below zero.
    """
    m = m.float() / m.float().mean().clamp_min(1e-12)
    return F.interpolate(m[None, None], size=(32, 32), mode="bilinear", align_corners=False)[0, 0]


# One colour scale for every saliency map of every run: log-spaced from half to twice an
# average patch, so 1 (the mean) is the middle colour and a flat map looks flat.
SALIENCY_RANGE = (0.5, 2.0)
SALIENCY_TICKS = [0.5, 0.7, 1.0, 1.4, 2.0]


def text_size(fig: Figure, text: str, fontsize: float) -> tuple[float, float]:
    """(width, height) in pixels of `text` drawn at `fontsize` on `fig` (which has a canvas)."""
    t = fig.text(0, 0, text, fontsize=fontsize)
    box = t.get_window_extent(fig.canvas.get_renderer())
    t.remove()
    return box.width, box.height


def map_headings(run: dict, stages: list[dict]) -> tuple[list[str], list[str]]:
    """(keys in the snapshot, column headings) of the maps drawn per stage.

    A distillation run has the teacher's and the student's maps. A run without a teacher
    stores its own map under "student"; that is a student only in a CE / CL student run.
    A teacher's own run is headed "model": it is the model, there is no student.
    """
    if any("teacher" in s for s in stages):
        return ["teacher", "student"], ["teacher", "student"]
    teacher_run = run["name"].startswith("teacher_") or setup_label(run).startswith("teacher")
    return ["student"], ["model" if teacher_run else "student"]


def saliency_figure(run_dir: str, n_images: int = 3) -> Figure:
    """The figure plot_saliency saves; see there."""
    run = load_run(run_dir)
    snap = run["saliency"]
    if snap is None:
        raise RunError(f"{run['dir']} has no saliency.pt: run "
                       f"`{make_command(run['dir'], run['config'].get('quick'))}`")
    images, labels, stages = snap["images"], snap["labels"], snap["stages"]
    n = min(n_images, len(images))
    who, headings = map_headings(run, stages)
    cols = 1 + len(who)   # the input, then one overlay per model

    # The upsampled maps, and each row's actual range (of the maps themselves, / their mean).
    maps = [[{w: upsample_map(s[w][i]) for w in who if w in s} for s in stages] for i in range(n)]
    rel = [[s[w][i].float() / s[w][i].float().mean().clamp_min(1e-12) for s in stages
            for w in who if w in s] for i in range(n)]
    ranges = [(min(float(m.min()) for m in row), max(float(m.max()) for m in row))
              for row in rel]

    # The layout in pixels, so that every 32-px picture is drawn at exactly 3x: crisp
    # blocks, and a PNG that compresses well (the figure stays under 200 KB). From the
    # top: the title (measured once wrapped), the stage resolutions, the column headings,
    # the rows of pictures; the colour bar right of all rows.
    cell, gap, block_gap, row_gap = 96, 2, 12, 4
    left, bottom, bar_gap, bar_w, right = 40, 8, 10, 12, 62
    block_w = cols * cell + (cols - 1) * gap
    grid_w = len(stages) * block_w + (len(stages) - 1) * block_gap
    width = left + grid_w + bar_gap + bar_w + right
    fig = Figure(figsize=(width / DPI, 4), dpi=DPI)
    FigureCanvasAgg(fig)   # a renderer to measure text with; no pyplot backend involved

    title = (f"{run['name']} ({setup_label(run)}{', quick mode' if is_quick(run) else ''}): "
             f"attention rollout of the cls token at the end of each curriculum stage. "
             f"Colour = saliency / map mean (1 = an average patch) on one fixed log scale "
             f"for all maps; under each class, the row's actual min–max")
    chars = max(20, width // 6)
    while True:   # wrap until the widest line fits, measured, not guessed
        wrapped = textwrap.fill(title, width=chars)
        title_w, title_h = text_size(fig, wrapped, 9)
        if title_w <= width - 8 or chars <= 20:
            break
        chars -= 3
    line_h = text_size(fig, "Xpy", 8)[1]
    title_top, title_gap, head_gap = 4, 8, 3
    heads_top = title_top + title_h + title_gap      # the stage resolutions' line
    top = round(heads_top + 2 * line_h + 2 + head_gap)
    height = top + n * cell + (n - 1) * row_gap + bottom
    fig.set_size_inches(width / DPI, height / DPI)

    def axes_at(x: int, y: int, w: int, h: int):
        """An axes at pixel box (x, y from the top-left, w, h), without ticks."""
        ax = fig.add_axes((x / width, 1 - (y + h) / height, w / width, h / height))
        ax.set_xticks([])
        ax.set_yticks([])
        return ax

    def text_at(x: float, y: float, s: str, **kw):
        """Text with its top at pixel (x, y from the top-left)."""
        return fig.text(x / width, 1 - y / height, s, va="top", **kw)

    text_at(width / 2, title_top, wrapped, ha="center", fontsize=9)
    norm = LogNorm(*SALIENCY_RANGE, clip=False)
    # Maps go over a grey copy of the image: the colour then means saliency only (and the
    # PNG stays small, a colour photo under each map would double its size).
    grey = (images.float() / 255
            * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(1).numpy()
    for j, stage in enumerate(stages):
        res = stage["res"]
        # What the student was fed: the training resize to `res` px, drawn blocky.
        seen = (data_lib.resize(images[:n].float() / 255, res).clamp(0, 1)
                .permute(0, 2, 3, 1).numpy())                                   # (n, res, res, 3)
        x0 = left + j * (block_w + block_gap)
        text_at(x0 + block_w / 2, heads_top, f"{res} px", ha="center", fontsize=8,
                fontweight="bold")
        for c, t in enumerate(["input"] + headings):
            text_at(x0 + c * (cell + gap) + cell / 2, heads_top + line_h + 2, t, ha="center",
                    fontsize=8)
        for i in range(n):
            y = top + i * (cell + row_gap)
            axes = [axes_at(x0 + c * (cell + gap), y, cell, cell) for c in range(cols)]
            axes[0].imshow(seen[i], interpolation="nearest")
            for ax, w in zip(axes[1:], who):
                ax.imshow(grey[i], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                if w in maps[i][j]:
                    ax.imshow(maps[i][j][w].clamp_min(1e-6).numpy(), cmap="jet", alpha=0.5,
                              norm=norm, interpolation="nearest")
                else:
                    ax.text(16, 16, "no map", ha="center", va="center", fontsize=7, color="white")
            if j == 0:
                lo, hi = ranges[i]
                axes[0].set_ylabel(f"{CLASSES[int(labels[i])]}\n{lo:.2f}–{hi:.2f}", fontsize=8,
                                   labelpad=3)
    # One colour bar for all rows: the scale is the same everywhere.
    rows_h = n * cell + (n - 1) * row_gap
    bar = fig.colorbar(ScalarMappable(norm, cmap="jet"), extend="both",
                       cax=axes_at(left + grid_w + bar_gap, top, bar_w, rows_h))
    bar.set_ticks(SALIENCY_TICKS, labels=[f"{v:g}" for v in SALIENCY_TICKS])
    bar.ax.yaxis.set_minor_locator(NullLocator())
    bar.ax.tick_params(labelsize=7)
    bar.set_label("saliency / map mean", fontsize=8)
    return fig


def plot_saliency(run_dir: str, out_path: str, n_images: int = 3) -> str:
    """Rows: fixed test images. Per curriculum stage: the input the student saw at that
    resolution, the teacher's rollout map and the student's (KD runs; a run without a
    teacher has one map, headed "model" for a teacher's own run), overlaid on the 32-px image.

    Colour scale: one fixed scale for every map of every run and stage, log-spaced from
    0.5 to 2 times the map's mean (1, an average patch, is the middle colour; values outside
    are clipped, the colour bar's end arrows). Stretching each row to its own min..max would
    paint a map that varies by +-2 % in the full range of colours, as strongly as one that
    varies by a factor of 3; on a fixed scale a flat map looks flat, and maps of different
    runs and stages can be compared by colour. What the fixed scale hides (the range of a
    nearly flat map) is printed under each row's class: the actual min..max of the row's maps
    (before upsampling, in units of each map's mean).
    """
    fig = saliency_figure(run_dir, n_images)
    fig.savefig(out_path, dpi=DPI, pil_kwargs=dict(optimize=True))
    return out_path


# =============================================================================
# Figure 4: the paper's Table 1 next to ours
# =============================================================================

def paper_key(name: str) -> str | None:
    """The Table 1 cell a run reproduces. The quick teacher stands in for ViT-Small."""
    if name.startswith("teacher_quick_p"):
        name = name.replace("teacher_quick_p", "teacher_small_p")
    return name if name in experiments.PAPER else None


def span(results: list[dict], key: str) -> str:
    """The range of one results.json field over runs: "6", or "6–8" when they differ."""
    v = sorted({r[key] for r in results if key in r}) or ["?"]
    return f"{v[0]}" if len(v) == 1 else f"{v[0]}–{v[-1]}"


def plot_table(run_dirs: list[str], out_path: str) -> str:
    """Grouped bars, paper vs ours, for each run that is a cell of Table 1 (in table order).

    Under each pair: the run (with its folder when two runs share a name), its setup and,
    for a stand-in, the paper's cell on lines of their own; the figure is as wide as the
    widest label line needs, so labels of neighbouring pairs never run into each other.
    """
    runs = [r for r in map(load_run, run_dirs) if r["results"] is not None and paper_key(r["name"])]
    if not runs:
        raise RunError("no run with a results.json is a cell of the paper's table "
                       "(`python experiments.py list`)")
    order = list(experiments.PAPER)
    runs.sort(key=lambda r: order.index(paper_key(r["name"])))
    fig = Figure(figsize=(5.5, 4.2), dpi=DPI)
    FigureCanvasAgg(fig)   # a renderer, to measure the labels with
    ax = fig.subplots()
    x = torch.arange(len(runs)).float().numpy()
    w = 0.38
    paper = [experiments.PAPER[paper_key(r["name"])] for r in runs]
    ours = [r["results"]["test_acc"] for r in runs]
    quick = [is_quick(r) for r in runs]
    b1 = ax.bar(x - w / 2, paper, w, color="0.65", label="paper, Table 1")
    b2 = ax.bar(x + w / 2, ours, w, color="C0", hatch=["//" if q else "" for q in quick],
                edgecolor="white",
                label="ours, quick mode (smoke test)" if all(quick)
                else "ours (// = quick mode)" if any(quick) else "ours")
    for bars in (b1, b2):
        ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    labels = []
    for r, name in zip(runs, run_labels(runs)):
        key = paper_key(r["name"])
        label = name.replace(" [", "\n[") + f"\n{setup_label(r)}"   # the folder on a line
        if key != r["name"]:
            label += f"\npaper cell:\n{key}"
        labels.append(label)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylim(0, 100)   # bars start at zero; a cut axis would exaggerate the gaps
    ax.set_ylabel("CIFAR-10 top-1 test accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", ncols=2)
    title = "Paper vs this code (test accuracy at 32 px, reported head)"
    if any(quick):
        # The quick runs' own sizes, from their results.json: a smoke test, not the protocol.
        res = [r["results"] for r, q in zip(runs, quick) if q]
        title += (f"\nquick mode: {span(res, 'train_images')} train / "
                  f"{span(res, 'test_images')} test images, "
                  f"{span(res, 'epochs')} epochs, not the paper's protocol")
    ax.set_title(title, fontsize=9)
    # Wide enough that neighbouring labels keep a gap: each bar pair gets its widest label
    # line (measured) plus 24 px, the axes' margins 110 px.
    label_w = max(text_size(fig, line, 8)[0] for lab in labels for line in lab.split("\n"))
    fig.set_size_inches(max(5.5, (len(runs) * (label_w + 24) + 110) / DPI), 4.2)
    fig.tight_layout()
    fig.savefig(out_path, dpi=DPI)
    return out_path


# =============================================================================
# The command line
# =============================================================================

def parse_args(argv: list[str]) -> tuple[list[str], str | None]:
    run_dirs, out, args = [], None, list(argv)
    while args:
        a = args.pop(0)
        if a == "--out":
            if not args:
                raise RunError("--out needs a directory, e.g. --out docs/figures")
            out = args.pop(0)
        elif a.startswith("--out="):
            out = a[len("--out="):]
        elif a.startswith("-"):
            raise RunError(f"unknown option {a!r}; usage: python plots.py RUN_DIR... [--out DIR]")
        else:
            run_dirs.append(a)
    if not run_dirs:
        raise RunError("no run directory given; usage: python plots.py RUN_DIR... [--out DIR]")
    return run_dirs, out


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    matplotlib.use("Agg")   # off-screen: works on a headless server
    try:
        run_dirs, out = parse_args(argv)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Read every run before drawing anything: all problems are reported at once.
    runs, errors = [], []
    for d in run_dirs:
        try:
            runs.append(load_run(d))
        except RunError as e:
            errors.append(str(e))
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if errors:
        return 2
    out = out or os.path.join(os.path.dirname(runs[0]["dir"]) or ".", "figures")
    try:
        os.makedirs(out, exist_ok=True)
        draw_all(runs, out)
    except (OSError, RunError) as e:   # an unwritable --out, a run that changed while we read it
        msg = (f"cannot write to {out} ({e.strerror}); choose another with --out"
               if isinstance(e, OSError) else e)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return 0


def draw_all(runs: list[dict], out: str) -> None:
    """Every figure the runs have the files for, into `out`; notes for what is skipped."""
    # Runs that share a name (one experiment from two checkouts) get their folder in the file
    # name, curves_exp1b_base.png, rather than overwriting each other's figures.
    for run, label in zip(runs, run_labels(runs)):
        for note in run["notes"]:
            print(f"note: {note}")
        name = os.path.basename(run["dir"])
        if " [" in label:
            name += "_" + label[label.index(" [") + 2:-1]
        print("wrote", plot_curves(run["dir"], os.path.join(out, f"curves_{name}.png")))
        if run["saliency"] is not None:
            print("wrote", plot_saliency(run["dir"], os.path.join(out, f"saliency_{name}.png")))
    finished = [r for r in runs if r["results"] is not None]
    if not finished:
        print("note: no run has a results.json yet: no resolution.png or table.png")
        return
    print("wrote", plot_resolution([r["dir"] for r in finished],
                                   os.path.join(out, "resolution.png")))
    tested = [r["dir"] for r in finished if r["results"].get("at_epoch")]
    if tested:
        print("wrote", plot_efficiency(tested, os.path.join(out, "efficiency.png")))
    in_table = [r["dir"] for r in finished if paper_key(r["name"])]
    if in_table:
        print("wrote", plot_table(in_table, os.path.join(out, "table.png")))
    else:
        print("note: none of these runs is a cell of the paper's table: no table.png")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
