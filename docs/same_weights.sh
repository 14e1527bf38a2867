#!/bin/bash
# Do two commits train the study's arms to the same weights? The study's runs span several
# commits; this trains every kind of arm (CE, CE without augmentation, CL, crop CL, KD, KD+CL,
# KD+CL+Sal) on a 1,024-image subset for 6 epochs at both commits, with the study's committed
# teacher, and the study's teacher recipe itself for 3 epochs, and compares every tensor and
# every test prediction.
#
#   bash docs/same_weights.sh COMMIT_A COMMIT_B     (from the repository root; about 15 min)
#
# Each commit's runs are kept in .same_weights/SHA/ (git-ignored), so a commit is trained once.
set -euo pipefail
root=$(pwd)
cache=$root/.same_weights
arms="study_ce study_ce_noaug study_cl study_cl_crop study_kd study_kd_cl study_kd_cl_sal"
teacher=$root/results/study/teacher_custom_p4_30ep/model.pt
small="--train_size=1024 --val_size=256 --test_size=512"
shas=()
for commit in "$1" "$2"; do
  sha=$(git rev-parse --short=7 "$commit^{commit}")
  shas+=("$sha")
  out=$cache/$sha
  [ -e "$out/done" ] && continue
  rm -rf "$out"; mkdir -p "$out"
  git worktree add -q --detach "$out/tree" "$sha"
  ln -s "$root/.venv" "$out/tree/.venv"; ln -s "$root/data" "$out/tree/data"
  for arm in $arms; do
    (cd "$out/tree" && OMP_NUM_THREADS=1 .venv/bin/python experiments.py $arm $small --epochs=6 \
      --test_epochs=1,3 --teacher="$teacher" --out="$out/runs" > "$out/$arm.log" 2>&1)
  done
  (cd "$out/tree" && OMP_NUM_THREADS=1 .venv/bin/python experiments.py teacher_custom_p4_30ep \
    $small --epochs=3 --out="$out/runs" > "$out/teacher.log" 2>&1)
  git worktree remove --force "$out/tree"
  touch "$out/done"
done
.venv/bin/python - "$cache" "${shas[@]}" $arms teacher_custom_p4_30ep <<'PY'
import json, sys, torch
cache, a, b, *arms = sys.argv[1:]
print(f"{'run':24s} {a} vs {b}")
for arm in arms:
    w = [torch.load(f"{cache}/{s}/runs/{arm}/model.pt", weights_only=False)["model"] for s in (a, b)]
    p = [json.load(open(f"{cache}/{s}/runs/{arm}/predictions.json")) for s in (a, b)]
    same = w[0].keys() == w[1].keys() and all(torch.equal(w[0][k], w[1][k]) for k in w[0])
    print(f"{arm:24s} {'the same weights and predictions' if same and p[0] == p[1] else 'DIFFERENT'}")
PY
