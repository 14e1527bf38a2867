"""Cost of one training step per saliency method, beside no saliency and rollout.

    OMP_NUM_THREADS=1 .venv/bin/python docs/saliency_cost.py [--steps=7] [--out=docs/saliency_cost.out]

irkd.train_step (student forward, teacher forward, CE + KD (+ saliency), backward, AdamW) on
random 32-px images, batch 128, CPU: student build_model("custom", patch_size=4,
distill_token=True), teacher build_model("custom", patch_size=4). The modes take turns, one
step each per round, so a change in the machine's load hits all of them alike; the first
round is a warm-up and is not counted. Reported: the median (and min, max) over the rounds.
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import irkd  # noqa: E402
import train as train_lib  # noqa: E402
import saliency_variants  # noqa: E402

MODES = ("none", "rollout", "grad", "attn", "probe")


def make(mode: str, seed: int = 0):
    torch.manual_seed(seed)
    student = irkd.build_model("custom", patch_size=4, distill_token=True)
    teacher = irkd.build_model("custom", patch_size=4)
    gamma = 0.0 if mode == "none" else 0.8
    loss_fn = irkd.IRKDLoss(teacher, gamma=gamma, student_depth=len(student.blocks),
                            saliency=saliency_variants.METHODS["rollout" if mode == "none" else mode]())
    opt = irkd.make_optimizer(student, train_lib.RunConfig())
    student.train()
    loss_fn.train()
    return student, loss_fn, opt


def main(argv: list[str]) -> int:
    opts = dict(a[2:].split("=", 1) for a in argv if a.startswith("--"))
    steps, out = int(opts.get("steps", 7)), opts.get("out", "docs/saliency_cost.out")
    torch.manual_seed(0)
    x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
    cells = {m: make(m) for m in MODES}
    times = {m: [] for m in MODES}
    load0 = os.getloadavg()
    for r in range(steps + 1):                                   # round 0: warm-up
        for m, (student, loss_fn, opt) in cells.items():
            t0 = time.perf_counter()
            irkd.train_step(student, loss_fn, opt, x, y, labels=y, teacher_input=x, lr=3e-4)
            if r:
                times[m].append(time.perf_counter() - t0)
    load1 = os.getloadavg()
    base = statistics.median(times["rollout"])
    lines = [
        "# docs/saliency_cost.py: ms per irkd.train_step, batch 128, 32 px, CPU, "
        f"torch.get_num_threads()={torch.get_num_threads()} (OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), torch {torch.__version__}, {platform.processor() or platform.machine()}",
        f"# {os.cpu_count()} cores SHARED with other long jobs (load average {load0[0]:.2f} before, "
        f"{load1[0]:.2f} after): absolute times are inflated and noisy; compare the ratios",
        f"# student custom p4 + dist token, teacher custom p4; {steps} timed steps per mode after 1 warm-up,"
        " modes interleaved; median (min..max)",
    ]
    for m in MODES:
        t = [1000 * s for s in times[m]]
        lines.append(f"student custom teacher custom 32px batch 128  {m:<8} {statistics.median(t):6.0f} ms/step"
                     f"  ({min(t):.0f}..{max(t):.0f})  x{statistics.median(times[m]) / base:.2f} rollout")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    with open(out, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
