"""Wall time and peak memory of every named variant in quick mode, as a new user meets them:

    .venv/bin/python docs/quick_times.py > docs/quick_times.out

Each variant runs as `experiments.py NAME --quick` in a fresh process, all into one fresh
output folder, in the order a user of the README would meet them: exp1a trains the patch-4
quick teacher (exp1b and small_p4_all reuse it), saliency_p2 trains the patch-2 one (kdonly
reuses it); then five replays of the notebooks (the teachers cached by then). Then exp1a
once more with OMP_WAIT_POLICY=ACTIVE (OpenMP's busy-waiting threads,
what the code turned off) in a third folder, to show what PASSIVE costs on an idle machine.
Run it on an idle machine: the load average before each command is printed beside it.
"""
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
VARIANTS = ["exp1a", "exp1b", "small_p4_all", "saliency_p2", "kdonly"]
REPLAYS = ["orig_custom_p2_ce", "orig_custom_p2_cl", "orig_custom_p2_kd_cl_sal",
           "orig_tiny_p4_kd_cl_sal", "orig_tiny_p2_kd"]


def run(name: str, out: str, env: dict) -> float:
    """The wall seconds of one quick variant (its teacher too, when it trains one)."""
    t0 = time.time()
    subprocess.run([sys.executable, "experiments.py", name, "--quick", f"--out={out}"],
                   cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.time() - t0


def main() -> None:
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    print(f"# experiments.py NAME --quick, {os.cpu_count()} cores, torch threads by default; "
          f"peak = the process's resident peak (results.json: peak_memory_mib)")
    with tempfile.TemporaryDirectory() as tmp:
        for label, names, env in (("PASSIVE", VARIANTS + REPLAYS, base),
                                  ("ACTIVE", ["exp1a"], base | {"OMP_WAIT_POLICY": "ACTIVE"})):
            out = os.path.join(tmp, label)
            for name in names:
                load = os.getloadavg()[0]
                wall = run(name, out, env)
                print(f"{name:13s} OMP_WAIT_POLICY={label:7s} {wall:6.0f} s   "
                      f"(load before {load:.2f})", flush=True)
            # every run's own peak (a teacher trained inside a student's process counts there)
            for path in sorted(glob.glob(os.path.join(out, "quick", "*", "results.json"))):
                with open(path) as f:
                    r = json.load(f)
                rss = r.get("peak_memory_mib", {}).get("rss", float("nan"))
                print(f"    {r['name']:32s} peak {rss / 1024:5.2f} GiB, wall_s {r['wall_s']:6.1f}, "
                      f"test {r['test_acc']:.2f} % ({r.get('test_head', 'avg')} head)", flush=True)


if __name__ == "__main__":
    main()
