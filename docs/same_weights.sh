#!/bin/bash
# Do two commits train the study's arms to the same weights? The study's runs span several
# commits; this trains each kind of arm (CE, CL, KD+CL, KD+CL+Sal) on a 1,024-image subset for
# 6 epochs at both commits, with the study's committed teacher, and compares every tensor.
#
#   bash docs/same_weights.sh COMMIT_A COMMIT_B     (from the repository root; about 8 min)
set -euo pipefail
a=$1; b=$2
root=$(pwd); tmp=$(mktemp -d)
trap 'git worktree remove --force "$tmp/a" 2>/dev/null; git worktree remove --force "$tmp/b" 2>/dev/null; rm -rf "$tmp"' EXIT
teacher=$root/results/study/teacher_custom_p4_30ep/model.pt
for side in a b; do
  git worktree add -q --detach "$tmp/$side" "${!side}"
  ln -s "$root/.venv" "$tmp/$side/.venv"; ln -s "$root/data" "$tmp/$side/data"
  for arm in study_ce study_cl study_kd_cl study_kd_cl_sal; do
    (cd "$tmp/$side" && OMP_NUM_THREADS=1 .venv/bin/python experiments.py $arm --train_size=1024 \
      --val_size=256 --test_size=512 --epochs=6 --test_epochs=1,3 --teacher="$teacher" \
      --out="$tmp/out_$side" > "$tmp/$side.$arm.log" 2>&1)
  done
done
.venv/bin/python - "$tmp" <<'EOF'
import json, sys, torch
tmp = sys.argv[1]
for arm in ("study_ce", "study_cl", "study_kd_cl", "study_kd_cl_sal"):
    w = [torch.load(f"{tmp}/out_{s}/{arm}/model.pt", weights_only=False)["model"] for s in "ab"]
    p = [json.load(open(f"{tmp}/out_{s}/{arm}/predictions.json")) for s in "ab"]
    same = all(torch.equal(w[0][k], w[1][k]) for k in w[0]) and p[0] == p[1]
    print(f"{arm:16s} {'the same weights and predictions' if same else 'DIFFERENT'}")
EOF
