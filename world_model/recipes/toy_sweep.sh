#!/usr/bin/env bash
# The zoom toy (zoom_toy.py) side by side on one GPU: one process per run, each on one CPU thread, and one
# archive of every JSON and log under $OUT (a device call brings back at most 8 files). Each line of RUNS is
# "name args...", the args added to the common ones below. Session 23 (docs/EVALUATION.md).
#
#   OUT=/tmp/out bash world_model/recipes/toy_sweep.sh [SECONDS]
set -u
limit=${1:-420}
export OMP_NUM_THREADS=1 PYTHONPATH=$PWD PYTHONUNBUFFERED=1
common="--momentum 0.906 --device cuda"
RUNS=${RUNS:-"pa-s1 --variants patch_action --seed 1
pa-s2 --variants patch_action --seed 2
pa-s3 --variants patch_action --seed 3
pa-s4 --variants patch_action --seed 4
pm-s1 --variants patch_momentum --seed 1
pm-s2 --variants patch_momentum --seed 2
pm-s3 --variants patch_momentum --seed 3
pm-s4 --variants patch_momentum --seed 4
pm-roll-s1 --variants patch_momentum --seed 1 --rollout 0.5
pm-roll-s2 --variants patch_momentum --seed 2 --rollout 0.5
pm-hold-s1 --variants patch_momentum --seed 1 --hold 0.75
pm-hold-s2 --variants patch_momentum --seed 2 --hold 0.75
pm-8k-s1 --variants patch_momentum --seed 1 --steps 8000
pm-8k-s2 --variants patch_momentum --seed 2 --steps 8000
pa-8k-s1 --variants patch_action --seed 1 --steps 8000
pa-8k-s2 --variants patch_action --seed 2 --steps 8000"}
mkdir -p "$OUT/toy"
nvidia-smi -L 2>/dev/null
while read -r name args; do
  [ -n "$name" ] || continue
  # shellcheck disable=SC2086
  timeout "$limit" python3 -m world_model.recipes.zoom_toy $common $args --json "$OUT/toy/$name.json" \
    > "$OUT/toy/$name.log" 2>&1 &
done <<< "$RUNS"
wait
grep -H "held" "$OUT"/toy/*.log | sed "s|$OUT/toy/||"
for f in "$OUT"/toy/*.log; do grep -q held "$f" || echo "$(basename "$f"): $(tail -n 1 "$f")"; done
tar czf "$OUT/toy.tgz" -C "$OUT" toy && rm -rf "$OUT/toy"
