#!/usr/bin/env bash
# The whole GPU part of the recipe on one H100 machine, as one background job (docs/GPU.md):
#   teacher slice -> Stage A (TF-dCM) -> Stage B (Self-Forcing DMD) -> evaluations -> benchmark.
# Evaluations run beside the distillation stages (they only read finished checkpoints), so the GPU is
# never idle waiting for one of them. Every stage logs to runs/logs/NAME.log and marks runs/done/NAME.
#
#   setsid nohup bash world_model/recipes/h100_pipeline.sh > runs/logs/pipeline.log 2>&1 &
#
# Knobs (environment): TEACHER_MIN (9), CM_MIN (4), DMD_MIN (8), TEACHER_TOTAL (cosine horizon over all slices, 40: the shipped teacher is at 30.6 min, so a 9-minute slice anneals to the end),
# EVAL_TEACHER (1: evaluate the teacher too; its 16-step evaluation took 11 minutes beside Stage A in session 2).
set -u
cd "$(dirname "$0")/../.."
mkdir -p runs/logs runs/done runs/eval runs/bench
TEACHER_MIN=${TEACHER_MIN:-9}; CM_MIN=${CM_MIN:-4}; DMD_MIN=${DMD_MIN:-8}; EVAL_TEACHER=${EVAL_TEACHER:-1}; TEACHER_TOTAL=${TEACHER_TOTAL:-40}
T=runs/teacher/teacher.safetensors
TRACES='assets/traces/heldout-*.jsonl'

stage() {  # stage NAME CMD...: run once, log, mark done (a rerun of the script skips finished stages)
  local name=$1; shift
  [ -e "runs/done/$name" ] && { echo "skip $name"; return 0; }
  echo "$(date +%T) start $name"
  local t0=$SECONDS
  "$@" > "runs/logs/$name.log" 2>&1
  local rc=$?
  echo "$(date +%T) end $name rc=$rc $((SECONDS - t0)) s"
  echo "$rc $((SECONDS - t0))" > "runs/done/$name"
  return $rc
}

evaluate() {  # evaluate NAME MODEL ARGS...
  local name=$1 model=$2; shift 2
  stage "eval-$name" python3 -m world_model.recipes.evaluate --model "$model" --traces "$TRACES" \
    --out "runs/eval/$name" --device cuda "$@"
}

# 1. Teacher: continue from the shipped weights and anneal (cosine over TEACHER_TOTAL minutes in all).
stage teacher python3 -m world_model.recipes.train_teacher settings/train/teacher.yaml --out runs/teacher \
  --init assets/checkpoints/teacher.safetensors --set max_minutes="$TEACHER_MIN" \
  --set total_minutes="$TEACHER_TOTAL" --set compile=true \
|| stage teacher-eager python3 -m world_model.recipes.train_teacher settings/train/teacher.yaml --out runs/teacher \
  --init assets/checkpoints/teacher.safetensors --set max_minutes="$TEACHER_MIN" --set total_minutes="$TEACHER_TOTAL"
[ -e "$T" ] || T=assets/checkpoints/teacher.safetensors

# 2. Stage A, beside the teacher's evaluations (its default 16 Euler steps, and few-step consistency).
if [ "$EVAL_TEACHER" = 1 ]; then
  ( evaluate teacher16 "$T" --steps 16
    evaluate teacher-cm1 "$T" --sampler consistency --steps 1
    evaluate teacher-cm2 "$T" --sampler consistency --steps 2 ) &
fi
stage cm python3 -m world_model.recipes.distill settings/train/distill_cm.yaml --out runs/distill_cm \
  --set teacher="$T" --set max_minutes="$CM_MIN" --set total_minutes="$CM_MIN" \
|| stage cm-eager python3 -m world_model.recipes.distill settings/train/distill_cm.yaml --out runs/distill_cm \
  --set teacher="$T" --set max_minutes="$CM_MIN" --set total_minutes="$CM_MIN" --set compile=false

# 3. Stage B, beside Stage A's evaluations.
( evaluate A-1 runs/distill_cm/student.safetensors --steps 1
  evaluate A-2 runs/distill_cm/student.safetensors --steps 2 ) &
stage dmd python3 -m world_model.recipes.distill settings/train/distill_dmd.yaml --out runs/distill_dmd \
  --init runs/distill_cm/student.safetensors --set teacher="$T" \
  --set max_minutes="$DMD_MIN" --set total_minutes="$DMD_MIN"
wait

# 4. The shipped student's evaluations, then the benchmark alone on the GPU.
S=runs/distill_dmd/student.safetensors
evaluate AB-1 "$S" --steps 1
evaluate AB-2 "$S" --steps 2
stage bench python3 main.py bench --device cuda --ticks 1000 --warmup 50 --model "$S" --teacher "$T" \
  --engines eager,graphs,graphs-fused,graphs-compile,graphs-fused-compile --json runs/bench/bench-h100.json
echo "$(date +%T) pipeline done"
