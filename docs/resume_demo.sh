#!/usr/bin/env bash
# exp1a quick, killed with SIGKILL mid-run and resumed, against an uninterrupted run (docs/reliability.md).
# Needs .venv/ (make setup), CIFAR-10 and the quick teacher (runs/quick/teacher_quick_p4/model.pt).
set -u
cd "$(dirname "$0")/.."   # the repository root, wherever this is called from
T=runs/quick/teacher_quick_p4/model.pt
A="exp1a --quick --teacher=$T"
rm -rf runs/demo_full runs/demo_kill
/usr/bin/time -f "uninterrupted wall %e s" .venv/bin/python experiments.py $A --out=runs/demo_full 2>&1 | tr '\r' '\n' | grep -E "exp1a:|wall"
.venv/bin/python experiments.py $A --out=runs/demo_kill > /tmp/demo_kill.log 2>&1 &
PID=$!
LOG=runs/demo_kill/quick/exp1a/log.jsonl
until [ -f $LOG ] && [ $(wc -l < $LOG) -ge 3 ]; do sleep 0.2; done
sleep 2
kill -9 $PID; wait $PID 2>/dev/null
echo "killed with SIGKILL after $(wc -l < $LOG) finished epochs; last progress line:"; tr '\r' '\n' < /tmp/demo_kill.log | grep img/s | tail -1
echo "resuming with the same command:"
.venv/bin/python experiments.py $A --out=runs/demo_kill 2>&1 | tr '\r' '\n' | grep -E "resum|exp1a:"
.venv/bin/python - <<'PY'
import json, torch
a = json.load(open("runs/demo_full/quick/exp1a/results.json")); b = json.load(open("runs/demo_kill/quick/exp1a/results.json"))
print("uninterrupted:", a["heads"]); print("killed+resumed:", b["heads"]); print("identical heads:", a["heads"] == b["heads"])
ma = torch.load("runs/demo_full/quick/exp1a/model.pt")["model"]; mb = torch.load("runs/demo_kill/quick/exp1a/model.pt")["model"]
print("bit-identical weights:", all(torch.equal(ma[k], mb[k]) for k in ma))
PY
