"""Figures for IRKD runs: training curves, accuracy vs resolution, saliency maps, paper table.

    python plots.py RUN_DIR [RUN_DIR ...] [--out DIR]

    python plots.py runs/quick/exp1b runs/quick/exp1a runs/quick/teacher_quick_p4 --out docs/figures

For every run directory (written by irkd.train, see its docstring):

    curves_NAME.png     accuracy and loss terms per epoch, stages marked        (plot_curves)
    saliency_NAME.png   teacher / student attention-rollout maps per stage end  (plot_saliency)

and across all of them (runs that have results.json only):

    resolution.png      test accuracy at every input resolution 12..32          (plot_resolution)
    table.png           paper Table 1 vs this code, one bar pair per cell       (plot_table)

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
import sys
import textwrap

import matplotlib
import torch
import torch.nn.functional as F
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

import experiments
import data as data_lib
import irkd

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
                           f"it was not written by irkd.train")
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

def plot_resolution(run_dirs: list[str], out_path: str) -> str:
    """Test accuracy of each run's reported head at 12..32 px; teachers dashed.

    This is the method's point: the curriculum should keep a student accurate on
    inputs below 32 px, where a model trained at 32 px only is expected to fall off.
    """
    runs = [r for r in map(load_run, run_dirs) if r["results"] is not None]
    if not runs:
        raise RunError("no run has a results.json yet: nothing to plot accuracy vs resolution from")
    fig = Figure(figsize=(8, 4), dpi=DPI)
    ax = fig.subplots()
    students = 0
    for run in runs:
        res = run["results"]
        by_res = sorted((int(k), v) for k, v in res["test_acc_by_res"].items())
        teacher = run["name"].startswith("teacher_")
        style = (dict(color="0.3", ls="--", marker="^") if teacher
                 else dict(color=f"C{students % 10}", marker="o"))
        students += not teacher
        ax.plot(*zip(*by_res), ms=4, label=f"{run['name']} ({res.get('test_head', 'cls')} head)",
                **style)
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
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.savefig(out_path, dpi=DPI, bbox_inches="tight")
    return out_path


# =============================================================================
# Figure 3: saliency maps through the curriculum
def efficiency_points(run: dict) -> list[tuple[float, float]]:
    """(cumulative training seconds, cls test accuracy at 32 px) after each tested epoch and at
    the end. Seconds are the epochs' step time (log.jsonl), without validation or tests."""
    at_epoch, t, points = run["results"].get("at_epoch") or {}, 0.0, []
    for row in run["log"]:
        t += row["seconds"]
        if str(row["epoch"]) in at_epoch:
            points.append((t, at_epoch[str(row["epoch"])]["cls"]))
    last = run["results"].get("heads_last", run["results"]["heads"])["cls"]["32"]
    return points + [(t, last)]


def plot_efficiency(run_dirs: list[str], out_path: str) -> str:
    """Test accuracy (cls head, 32 px) against cumulative training seconds, one line per run.

    The curriculum's claim is efficiency: at equal training time, is it ahead? Runs that
    shared a machine have noisy seconds; the study runs record theirs one thread each.
    """
    runs = [r for r in map(load_run, run_dirs) if r["results"] and r["results"].get("at_epoch")]
    if not runs:
        raise RunError("no run tested after its epochs (test_epochs): nothing to plot")
    fig = Figure(figsize=(8, 4), dpi=DPI)
    ax = fig.subplots()
    for i, run in enumerate(runs):
        x, y = zip(*efficiency_points(run))
        ax.plot([v / 60 for v in x], y, marker="o", ms=3, color=f"C{i % 10}",
                ls="-" if run["config"].get("cl") else "--", label=run["name"])
    ax.set_xlabel("cumulative training time (min; steps only)")
    ax.set_ylabel("top-1 test accuracy at 32 px (%, cls head)")
    ax.grid(alpha=0.3)
    ax.set_title("Accuracy vs training time (solid: curriculum; dashed: fixed 32 px)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
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


def plot_saliency(run_dir: str, out_path: str, n_images: int = 3) -> str:
    """Rows: fixed test images. Per curriculum stage: the input the student saw at that
    resolution, the teacher's rollout map and the student's (KD runs), overlaid on the
    32-px image. One colour scale per row, shared by all its stages and both models."""
    run = load_run(run_dir)
    snap = run["saliency"]
    if snap is None:
        raise RunError(f"{run['dir']} has no saliency.pt: run "
                       f"`{make_command(run['dir'], run['config'].get('quick'))}`")
    images, labels, stages = snap["images"], snap["labels"], snap["stages"]
    n = min(n_images, len(images))
    who = ["teacher", "student"] if any("teacher" in s for s in stages) else ["student"]
    cols = 1 + len(who)   # the input, then one overlay per model

    # The upsampled maps first: the colour scale of a row is the range over all its maps.
    maps = [[{w: upsample_map(s[w][i]) for w in who if w in s} for s in stages] for i in range(n)]
    ranges = [(min(float(m.min()) for st in row for m in st.values()),
               max(float(m.max()) for st in row for m in st.values())) for row in maps]

    # The layout in pixels, so that every 32-px picture is drawn at exactly 2x: crisp
    # blocks, and a PNG that compresses well (the figure stays under 200 KB).
    cell, gap, block_gap, row_gap = 96, 2, 12, 4
    left, bottom, bar_w, right = 28, 6, 12, 44
    block_w = cols * cell + (cols - 1) * gap
    width = left + len(stages) * (block_w + block_gap) + bar_w + right
    title = (f"{run['name']} ({setup_label(run)}{', quick mode' if is_quick(run) else ''}): "
             f"attention rollout of the cls token at the end of each curriculum stage; "
             f"colour = saliency / map mean "
             f"(1 = an average patch), one scale per row")
    title = textwrap.fill(title, width=max(30, width // 8))   # ~7 px per character at 9 pt
    top = 34 + 13 * title.count("\n") + 14      # the title, then two lines of column titles
    height = top + n * cell + (n - 1) * row_gap + bottom
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)

    def axes_at(x: int, y: int, w: int, h: int):
        """An axes at pixel box (x, y from the top-left, w, h), without ticks."""
        ax = fig.add_axes((x / width, 1 - (y + h) / height, w / width, h / height))
        ax.set_xticks([])
        ax.set_yticks([])
        return ax

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
        for i in range(n):
            y = top + i * (cell + row_gap)
            axes = [axes_at(x0 + c * (cell + gap), y, cell, cell) for c in range(cols)]
            axes[0].imshow(seen[i], interpolation="nearest")
            for ax, w in zip(axes[1:], who):
                ax.imshow(grey[i], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                if w in maps[i][j]:
                    ax.imshow(maps[i][j][w].numpy(), cmap="jet", alpha=0.5, vmin=ranges[i][0],
                              vmax=ranges[i][1], interpolation="nearest")
                else:
                    ax.text(16, 16, "no map", ha="center", va="center", fontsize=7, color="white")
            if i == 0:
                for ax, t in zip(axes, ["input"] + who):
                    ax.set_title(f"{res} px\n{t}" if t == "input" else t, fontsize=8, pad=3)
            if j == 0:
                axes[0].set_ylabel(CLASSES[int(labels[i])], fontsize=9, labelpad=3)
            if j == len(stages) - 1:   # the row's colour scale, right of its last stage
                bar = fig.colorbar(ScalarMappable(Normalize(*ranges[i]), cmap="jet"),
                                   cax=axes_at(x0 + block_w + block_gap, y, bar_w, cell))
                bar.ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=9, y=1 - 4 / height, va="top")
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
    """Grouped bars, paper vs ours, for each run that is a cell of Table 1 (in table order)."""
    runs = [r for r in map(load_run, run_dirs) if r["results"] is not None and paper_key(r["name"])]
    if not runs:
        raise RunError("no run with a results.json is a cell of the paper's table "
                       "(`python experiments.py list`)")
    order = list(experiments.PAPER)
    runs.sort(key=lambda r: order.index(paper_key(r["name"])))
    fig = Figure(figsize=(max(5.5, 1.3 * len(runs) + 2), 4.2), dpi=DPI)
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
    for r in runs:
        key = paper_key(r["name"])
        label = f"{r['name']}\n{setup_label(r)}"
        if key != r["name"]:
            label += f"\n(paper: {key})"
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
    for run in runs:
        for note in run["notes"]:
            print(f"note: {note}")
        name = os.path.basename(run["dir"])
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
