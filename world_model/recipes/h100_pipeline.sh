#!/usr/bin/env bash
# The whole GPU part of the recipe on H100 machines, as background jobs (docs/GPU.md).
#
#   PART=train (default), one machine of ~30 minutes:
#     teacher slice, beside an action-guidance sweep of the shipped teacher -> choose the guidance scale ->
#     Stage A (TF-dCM, guided teacher) beside the new teacher's evaluation -> Stage B (Self-Forcing DMD, guided
#     real score) beside Stage A's evaluations -> the student's 1-step evaluation.
#   PART=move: see below (session 6: the teacher on data with move probes, then Stage A).
#   PART=player, a second machine (the .whl/ and .gl/ carries for the window; docs/GPU.md):
#     the benchmarks alone on the GPU (BENCH=0 skips them) -> 10 minutes of paced play in a real window, alone
#     on the GPU -> the student's 1- and 2-step evaluations (EVAL=0 skips them).
# Evaluations run beside training stages (they only read finished checkpoints), so the GPU never waits for
# one. Every stage logs to runs/logs/NAME.log and marks runs/done/NAME; a rerun skips finished stages.
#
#   setsid nohup bash world_model/recipes/h100_pipeline.sh > runs/logs/pipeline.log 2>&1 < /dev/null &
#
# Knobs (environment): TEACHER_MIN (9), CM_MIN (4), DMD_MIN (6), TEACHER_TOTAL (cosine horizon over all
# slices, 40; the shipped teacher is at 21.6 min. Session 2 annealed a 9-minute slice to the end and the result
# brightened in long rollouts: check a long drift before shipping a new teacher, docs/EVALUATION.md), SWEEP ("1 2 3":
# guidance scales tried on the shipped teacher), CFG (force a scale instead of the sweep's choice; also read
# from runs/cfg; with TEACHER_MIN=0 it also skips the sweep), BENCH (1: the benchmark first), S and T (the
# student and teacher for PART=player), EVAL_T (1: also the teacher's 16-step evaluation after the player part).
set -u
cd "$(dirname "$0")/../.."
mkdir -p runs/logs runs/done runs/eval runs/bench runs/play
PART=${PART:-train}
TEACHER_MIN=${TEACHER_MIN:-9}; CM_MIN=${CM_MIN:-4}; DMD_MIN=${DMD_MIN:-6}; TEACHER_TOTAL=${TEACHER_TOTAL:-40}
SWEEP=${SWEEP:-"1 2 3"}
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

# The benchmark (graphs-compile, unfused, left out: 65 s of compiling), then the compiled engine again in a
# new process, to time its first frame with inductor's on-disk cache warm (a player's second launch), then the
# decoder's precision and layout variants.
benches() {
  stage bench python3 main.py bench --device cuda --ticks 1000 --warmup 50 --model "$S" --teacher "$T" \
    --engines eager,graphs,graphs-fused,graphs-fused-compile --json runs/bench/bench-h100.json
  stage bench-warm python3 main.py bench --device cuda --ticks 300 --warmup 20 --model "$S" --teacher "$T" \
    --variants student1 --engines graphs-fused-compile --json runs/bench/bench-warm-cache.json
  stage decode-bench python3 -m world_model.recipes.decode_bench --json runs/bench/decode.json
}

S=${S:-assets/checkpoints/student.safetensors}; T=${T:-assets/checkpoints/teacher.safetensors}
if [ "$PART" = player ]; then
  [ "${BENCH:-1}" = 1 ] && benches
  # The window run has the GPU to itself, as on a player's machine: an evaluation beside it would compete
  # for the GPU and could make ticks late.
  bash world_model/recipes/h100_window.sh            # 10 minutes of paced play in a window (or headless)
  if [ "${EVAL:-1}" = 1 ]; then evaluate AB-1 "$S" --steps 1; evaluate AB-2 "$S" --steps 2; fi
  # EVAL_T=1: the teacher at its default 16 Euler steps on the same traces, for issue 4's like-for-like bounds.
  [ "${EVAL_T:-0}" = 1 ] && evaluate T16 "$T" --steps 16
  echo "$(date +%T) player part done"
  exit 0
fi

[ "${BENCH:-0}" = 1 ] && benches                      # BENCH=1: the benchmarks first, alone on the GPU

# PART=move (session 6): the shipped teacher continues for TEACHER_MIN on data with the policy's move probes
# (docs/DATA.md: forward/backward against the current motion), is stored int8 as shipped, and is evaluated at
# 16 steps beside Stage A at the guidance scales in PAIR ("1 3"); each student is then evaluated at 1 and 2 steps.
if [ "$PART" = move ]; then
  stage teacher python3 -m world_model.recipes.train_teacher settings/train/teacher.yaml --out runs/teacher \
    --init assets/checkpoints/teacher.safetensors --set max_minutes="$TEACHER_MIN" \
    --set total_minutes="$TEACHER_TOTAL" --set compile=true \
  || stage teacher-eager python3 -m world_model.recipes.train_teacher settings/train/teacher.yaml --out runs/teacher \
    --init assets/checkpoints/teacher.safetensors --set max_minutes="$TEACHER_MIN" --set total_minutes="$TEACHER_TOTAL"
  src=runs/teacher/teacher.safetensors; [ -e runs/teacher/teacher.index.json ] && src=runs/teacher/teacher.index.json
  stage teacher-int8 python3 -m world_model.recipes.quantize "$src" --out runs/teacher-int8/teacher.safetensors
  T=runs/teacher-int8/teacher.safetensors
  evaluate T16-move "$T" --steps 16 &
  for s in ${PAIR:-1 3}; do
    ( stage "cm-cfg$s" python3 -m world_model.recipes.distill settings/train/distill_cm.yaml --out "runs/cm-cfg$s" \
        --set teacher="$T" --set max_minutes="$CM_MIN" --set total_minutes="$CM_MIN" --set cm.teacher_cfg="$s" \
        --set data.collect.workers=6 --set save_int8=true
      evaluate "cm-cfg$s-1" "runs/cm-cfg$s/student.safetensors" --steps 1
      evaluate "cm-cfg$s-2" "runs/cm-cfg$s/student.safetensors" --steps 2 ) &
  done
  wait
  echo "$(date +%T) move part done"
  exit 0
fi

depth_student() {  # depth_student full|small|small-move WORKERS: Stage A at guidance 3 (small: the LAYERS
  # blocks; small-move: the same on clips with a forward break drawn MOVE_W times as often), then its 1- and
  # 2-step evaluations side by side
  local v=$1 extra=()
  [ "$v" != full ] && extra=(--set "student_layers=${LAYERS:-[0,2,4,6,7]}")
  [ "$v" = small-move ] && extra+=(--set move_weight="${MOVE_W:-4}")
  stage "cm-$v" python3 -m world_model.recipes.distill settings/train/distill_cm.yaml --out "runs/cm-$v" \
    --set teacher="$T" --set max_minutes="$CM_MIN" --set total_minutes="$CM_MIN" --set cm.teacher_cfg=3 \
    --set data.collect.workers="$2" --set save_int8=true "${extra[@]}"
  evaluate "cm-$v-1" "runs/cm-$v/student.safetensors" --steps 1 &
  evaluate "cm-$v-2" "runs/cm-$v/student.safetensors" --steps 2
  wait
}

# PART=depth (prepared in session 7; PART=quad ran the same students in session 8): Stage A at guidance 3 for the full-depth student and for a
# shallower one (LAYERS: the teacher blocks it keeps, default [0,2,4,6,7]) side by side, each evaluated at 1 and
# 2 steps, then the benchmark alone: is a 5-block student's 1-step tick a tenth of the teacher's (issue 6), and
# what does it cost in quality (issue 4's bounds)?
if [ "$PART" = depth ]; then
  for v in full small; do depth_student "$v" 7 & done
  wait
  stage bench-depth python3 main.py bench --device cuda --ticks 1000 --warmup 50 --variants student1,teacher \
    --engines graphs-fused --model runs/cm-small/student.safetensors --teacher "$T" --json runs/bench/bench-small.json
  stage bench-full python3 main.py bench --device cuda --ticks 1000 --warmup 50 --variants student1 \
    --engines graphs-fused --model runs/cm-full/student.safetensors --teacher "$T" --json runs/bench/bench-full.json
  echo "$(date +%T) depth part done"
  exit 0
fi

# PART=quad (session 8, a machine of 4 GPUs; every job has one GPU to itself, as on one H100):
#   GPU 0: Stage A at guidance 3, full depth, CM_MIN, then its 1- and 2-step evaluations;
#   GPU 1: the same for the shallower student (LAYERS);
#   GPU 2: the teacher continues for TEACHER_MIN (TEACHER_TOTAL the cosine horizon), int8, 16-step evaluation;
#   GPU 3: the shipped teacher's 16-step evaluation again, for its per-window table (the long-window runaway),
#          then the benchmark of each student against the teacher once that student exists.
if [ "$PART" = quad ]; then
  ( export CUDA_VISIBLE_DEVICES=0; depth_student full 12 ) &
  ( export CUDA_VISIBLE_DEVICES=1; depth_student small 12 ) &
  ( export CUDA_VISIBLE_DEVICES=2
    stage teacher python3 -m world_model.recipes.train_teacher settings/train/teacher.yaml --out runs/teacher \
      --init "$T" --set max_minutes="$TEACHER_MIN" --set total_minutes="$TEACHER_TOTAL" --set compile=true \
      --set data.collect.workers=12
    src=runs/teacher/teacher.safetensors; [ -e runs/teacher/teacher.index.json ] && src=runs/teacher/teacher.index.json
    stage teacher-int8 python3 -m world_model.recipes.quantize "$src" --out runs/teacher-int8/teacher.safetensors
    evaluate T16-new runs/teacher-int8/teacher.safetensors --steps 16 ) &
  ( export CUDA_VISIBLE_DEVICES=3
    evaluate T16-shipped "$T" --steps 16 --parts ar
    for v in small full; do
      while [ ! -e "runs/done/cm-$v" ]; do sleep 10; done
      variants=student1,student2; [ "$v" = small ] && variants=student1,student2,teacher
      stage "bench-$v" python3 main.py bench --device cuda --ticks 1000 --warmup 50 --variants "$variants" \
        --engines graphs-fused --model "runs/cm-$v/student.safetensors" --teacher "$T" --json "runs/bench/bench-$v.json"
    done ) &
  wait
  echo "$(date +%T) quad part done"
  exit 0
fi

# PART=rollout (prepared in session 8, ran in session 9 with TEACHER_MIN=6 ROLLOUT_PARTS=ar; a machine of 4 GPUs, one job per GPU): the shipped teacher
# continues for TEACHER_MIN (TEACHER_TOTAL the cosine horizon) on its own rollouts (train_teacher's
# rollout_rows: teacher-forcing rows whose context from frame 8 on is the EMA model's 4-step rollout), at 8 and
# at all 16 teacher-forcing rows, beside the same slice without it (the control); each is stored int8 and
# evaluated at 16 steps on its GPU. Does the long-window brightening (docs/EVALUATION.md, session 8) go?
if [ "$PART" = rollout ]; then
  gpu=0
  for rows in 8 16 0; do
    ( export CUDA_VISIBLE_DEVICES=$gpu
      args=(settings/train/teacher.yaml --out "runs/teacher-r$rows" --init "$T" --set max_minutes="$TEACHER_MIN"
            --set total_minutes="$TEACHER_TOTAL" --set compile=true --set data.collect.workers=14 --set rollout_rows="$rows")
      # If the rollout's graph capture fails inside the compiled loop, the same slice runs with an eager rollout.
      stage "teacher-r$rows" python3 -m world_model.recipes.train_teacher "${args[@]}" \
      || stage "teacher-r$rows-eager" python3 -m world_model.recipes.train_teacher "${args[@]}" --set rollout_graphs=false
      src="runs/teacher-r$rows/teacher.safetensors"
      [ -e "runs/teacher-r$rows/teacher.index.json" ] && src="runs/teacher-r$rows/teacher.index.json"
      stage "teacher-r$rows-int8" python3 -m world_model.recipes.quantize "$src" --out "runs/teacher-r$rows-int8/teacher.safetensors"
      # ROLLOUT_PARTS (e.g. "ar": the windows.csv brightness, 70 s) shortens the evaluation to those parts.
      evaluate "T16-r$rows" "runs/teacher-r$rows-int8/teacher.safetensors" --steps 16 ${ROLLOUT_PARTS:+--parts "$ROLLOUT_PARTS"} ) &
    gpu=$((gpu + 1))
  done
  wait
  echo "$(date +%T) rollout part done"
  exit 0
fi

# PART=next (prepared in session 9 for a machine of 4 GPUs, one job per GPU; ran in session 10 on 4 H200s):
#   GPU 0: a 6-block student (LAYERS6, default [0,1,3,4,5,6]: without the two blocks whose loss costs the cut
#          teacher least, block_importance.py, docs/DISTILLATION.md), Stage A at guidance 3 for CM_MIN, its 1- and
#          2-step evaluations, then the benchmark against the teacher with the stock and the compiled decoder
#          (issue 6: 10x needs a student tick of ~1.63 ms; estimate for 6 blocks + compiled decoder ~1.60);
#          Before the benchmark, decode_bench (session 10 ran it with a GroupNorm whose statistics came from a
#          plain reduction: slower than torch's kernel, 0.52 against 0.48-0.49 ms, and removed);
#   GPU 1: the teacher for TEACHER_MIN on clips with a forward break drawn MOVE_W (4) times as often
#          (move_weight; the move probes), int8, the full 16-step evaluation;
#   GPU 2: the 6-block student of GPU 0 with move_weight MOVE_W in Stage A (changed in session 10 from a
#          teacher on its own rollouts from frame 4: the 6-block student decides issue 6's 10x, so two tries);
#   GPU 3: Stage B (Self-Forcing DMD, the critic's rollout as CUDA graphs) from the shipped student for DMD_MIN,
#          then its 1- and 2-step evaluations: does self-forcing stop the shipped student's slow darkening
#          over 2,000 ticks (docs/EVALUATION.md, session 9)?
if [ "$PART" = next ]; then
  ( export CUDA_VISIBLE_DEVICES=0; LAYERS=${LAYERS6:-[0,1,3,4,5,6]} depth_student small 12
    stage decode-bench python3 -m world_model.recipes.decode_bench --json runs/bench/decode.json
    for dec in stock compiled; do
      flag=(); [ "$dec" = compiled ] && flag=(--compile-decoder)
      stage "bench-six-$dec" python3 main.py bench --device cuda --ticks 1000 --warmup 50 --variants student1,student2,teacher \
        --engines graphs-fused --model runs/cm-small/student.safetensors --teacher "$T" "${flag[@]}" \
        --json "runs/bench/bench-six-$dec.json"
    done ) &
  ( export CUDA_VISIBLE_DEVICES=3
    args=(settings/train/distill_dmd.yaml --out runs/dmd-shipped --init "$S" --set teacher="$T"
          --set max_minutes="$DMD_MIN" --set total_minutes="$DMD_MIN" --set data.collect.workers=12)
    stage dmd-shipped python3 -m world_model.recipes.distill "${args[@]}" \
    || stage dmd-shipped-eager python3 -m world_model.recipes.distill "${args[@]}" --set rollout.graphs=false
    evaluate dmd-shipped-1 runs/dmd-shipped/student.safetensors --steps 1 &
    evaluate dmd-shipped-2 runs/dmd-shipped/student.safetensors --steps 2; wait ) &
  ( export CUDA_VISIBLE_DEVICES=1 v=move
    stage "teacher-$v" python3 -m world_model.recipes.train_teacher settings/train/teacher.yaml \
      --out "runs/teacher-$v" --init "$T" --set max_minutes="$TEACHER_MIN" --set total_minutes="$TEACHER_TOTAL" \
      --set compile=true --set data.collect.workers=12 --set move_weight="${MOVE_W:-4}"
    src="runs/teacher-$v/teacher.safetensors"
    [ -e "runs/teacher-$v/teacher.index.json" ] && src="runs/teacher-$v/teacher.index.json"
    stage "teacher-$v-int8" python3 -m world_model.recipes.quantize "$src" --out "runs/teacher-$v-int8/teacher.safetensors"
    evaluate "T16-$v" "runs/teacher-$v-int8/teacher.safetensors" --steps 16 ) &
  ( export CUDA_VISIBLE_DEVICES=2; LAYERS=${LAYERS6:-[0,1,3,4,5,6]} depth_student small-move 12 ) &
  wait
  echo "$(date +%T) next part done"
  exit 0
fi

teacher_variant() {  # teacher_variant NAME ARGS...: train, int8, evaluate at 16 steps
  local v=$1; shift
  stage "teacher-$v" python3 -m world_model.recipes.train_teacher settings/train/teacher.yaml \
    --out "runs/teacher-$v" --init "$T" --set max_minutes="$TEACHER_MIN" --set total_minutes="$TEACHER_TOTAL" \
    --set compile=true --set data.collect.workers=12 "$@"
  local src="runs/teacher-$v/teacher.safetensors"
  [ -e "runs/teacher-$v/teacher.index.json" ] && src="runs/teacher-$v/teacher.index.json"
  stage "teacher-$v-int8" python3 -m world_model.recipes.quantize "$src" --out "runs/teacher-$v-int8/teacher.safetensors"
  evaluate "T16-$v" "runs/teacher-$v-int8/teacher.safetensors" --steps 16
}

# PART=momentum (prepared in session 10 for a machine of 4 GPUs, one job per GPU; nothing here has run yet):
# does conditioning on the decayed average of the recent moves (ModelConfig.action_momentum, Doom's walking
# momentum) give the forward/backward response that the tick's own input could not (docs/EVALUATION.md,
# session 10)? Each teacher continues the shipped one for TEACHER_MIN (the momentum inputs start at zero
# weight), is stored int8 and evaluated at 16 steps:
#   GPU 0: momentum, move_weight MOVE_W (4);   GPU 1: momentum, move_weight 1;   GPU 2: control, move_weight 1;
#   GPU 3: the background decoder compile's benchmark (runtime.compile_decoder, first run on a GPU), then Stage A
#          at guidance 3 from GPU 0's teacher once it exists (CM_MIN), evaluated at 1 and 2 steps.
if [ "$PART" = momentum ]; then
  ( export CUDA_VISIBLE_DEVICES=0; teacher_variant mom-move --set model.action_momentum=true --set move_weight="${MOVE_W:-4}" ) &
  ( export CUDA_VISIBLE_DEVICES=1; teacher_variant mom --set model.action_momentum=true ) &
  ( export CUDA_VISIBLE_DEVICES=2; teacher_variant control ) &
  ( export CUDA_VISIBLE_DEVICES=3
    stage bench-bg-decoder python3 main.py bench --device cuda --ticks 1000 --warmup 50 --variants student1,teacher \
      --engines graphs-fused --compile-decoder --json runs/bench/bench-bg-decoder.json
    while [ ! -e runs/done/teacher-mom-move-int8 ]; do sleep 10; done
    T=runs/teacher-mom-move-int8/teacher.safetensors depth_student full 12 ) &
  wait
  echo "$(date +%T) momentum part done"
  exit 0
fi

# PART=momentum2 (session 11, a machine of 2 GPUs): the two momentum teachers of PART=momentum (the control is
# session 10's move_weight-4 teacher without momentum, docs/EVALUATION.md), and before the second one the tick
# benchmark A/B: the code before the page-locked one-sync tick (a `git archive` of it carried as .carry/old.tgz,
# run from /tmp/old) against this tree, alternating, twice each, with the decoder compiling in the background.
if [ "$PART" = momentum2 ]; then
  ( export CUDA_VISIBLE_DEVICES=0; teacher_variant mom-move --set model.action_momentum=true --set move_weight="${MOVE_W:-4}" ) &
  ( export CUDA_VISIBLE_DEVICES=1
    if [ -e .carry/old.tgz ]; then
      rm -rf /tmp/old && mkdir -p /tmp/old && tar xzf .carry/old.tgz -C /tmp/old && ln -s "$PWD/assets" /tmp/old/assets
    fi
    ab() {  # ab NAME DIR: the shipped student and teacher, graphs-fused, decoder compiled in the background
      stage "bench-$1" bash -c "cd $2 && PYTHONPATH=$2:/tmp/vz python3 main.py bench --device cuda --ticks 1000 \
        --warmup 50 --variants student1,teacher --engines graphs-fused --compile-decoder auto --json $PWD/runs/bench/$1.json"
    }
    for r in 1 2; do
      [ -d /tmp/old ] && ab "old-$r" /tmp/old
      ab "new-$r" "$PWD"
    done
    stage bench-new-all python3 main.py bench --device cuda --ticks 1000 --warmup 50 --variants student1,student2,teacher \
      --engines graphs-fused --compile-decoder auto --json runs/bench/new-all.json
    teacher_variant mom --set model.action_momentum=true ) &
  wait
  echo "$(date +%T) momentum2 part done"
  exit 0
fi

# PART=blind2 (prepared in session 11 for a machine of 2 GPUs): does training on blind clips (loss.blind_prob:
# clean context, then up to 8 frames of near-pure noise, so motion must come from the actions) raise the
# forward/backward response and its gain? Each teacher continues the shipped one for TEACHER_MIN, is stored
# int8 and evaluated at 16 steps (the evaluation now reports the response gain and sends probes.csv):
#   GPU 0: blind clips on half the DF rows;   GPU 1: the control, the same slice without them.
if [ "$PART" = blind2 ]; then
  ( export CUDA_VISIBLE_DEVICES=0; teacher_variant blind --set loss.blind_prob="${BLIND:-0.5}" ) &
  ( export CUDA_VISIBLE_DEVICES=1; teacher_variant control ) &
  wait
  echo "$(date +%T) blind2 part done"
  exit 0
fi

# PART=speed (prepared in session 11 for one quiet H100, issue 6's device): the benchmark alone on the GPU,
# twice in fresh processes (the second with inductor's cache warm, as a player's second start), the decoder
# compiled in the background after the first frame (runtime.compile_decoder auto); then the same with the
# decoder autotuned (runtime.compile_decoder_mode), the eager engine for the graph speedup (300 ticks: the
# eager teacher takes ~145 ms a tick), and the decoder variants (autotuned among them).
if [ "$PART" = speed ]; then
  for r in 1 2; do
    stage "bench-speed-$r" python3 main.py bench --device cuda --ticks 1000 --warmup 50 \
      --variants student1,student2,teacher --engines graphs-fused --compile-decoder auto --json "runs/bench/speed-$r.json"
  done
  # Ticks while the decoder compiles (cold: a fresh inductor cache), unpaced, as `replay` runs them:
  # timing.csv's step_ms over the first seconds against the rest.
  stage replay-bg env TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-fresh python3 main.py replay \
    assets/traces/heldout-10100-long.jsonl --out runs/replay-bg --device cuda --no-video
  # The player's own loop, paced at 35 Hz, headless, also from a cold cache: its printed timing counts late ticks.
  stage play-bg env TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-fresh2 python3 main.py play --headless --ticks 700 --device cuda
  stage bench-autotune python3 main.py bench --device cuda --ticks 1000 --warmup 50 --variants student1,teacher \
    --engines graphs-fused --compile-decoder auto --compile-decoder-mode max-autotune-no-cudagraphs \
    --json runs/bench/speed-autotune.json
  stage bench-eager python3 main.py bench --device cuda --ticks 300 --warmup 20 --variants student1 \
    --engines eager-fused,graphs-fused --compile-decoder auto --json runs/bench/speed-eager.json
  stage decode-bench python3 -m world_model.recipes.decode_bench --json runs/bench/decode.json
  echo "$(date +%T) speed part done"
  exit 0
fi

# PART=rollout13 (session 13, one H100, about 20 minutes): the CUDA tests and three benchmarks of the code as
# it is (no old code), then the session-9 rollout teacher again with the rollout started at frame ROLL_FROM
# (2) instead of 8: the shipped teacher failed all 12 of its 2,000-tick drift rollouts in PART=driftseeds
# (session 13), brightening like its 128-tick windows, which session 9's rollout rows had cured up to 128
# ticks. Evaluated in full at 16 steps (drift: 4 rollouts).
if [ "$PART" = rollout13 ]; then
  stage pytest-cuda env PYTHONPATH="$PYTHONPATH:$PWD/.carry/pyt" python3 -m pytest -q tests/test_graphs.py -k cuda
  for r in ${RUNS-1 2 3}; do      # RUNS= (empty) skips the benchmarks
    stage "bench-new-$r" python3 main.py bench --device cuda --ticks ${TICKS:-600} --warmup 50 \
      --variants student1,teacher --engines graphs-fused --compile-decoder auto --json "runs/bench/new-$r.json"
  done
  name=teacher-r8f${ROLL_FROM:-2}
  stage "$name" python3 -m world_model.recipes.train_teacher settings/train/teacher.yaml --out "runs/$name" --init "$T" \
    --set max_minutes="$TEACHER_MIN" --set total_minutes="$TEACHER_TOTAL" --set compile=true --set data.collect.workers=14 \
    --set rollout_rows=8 --set rollout_from="${ROLL_FROM:-2}"
  src="runs/$name/teacher.safetensors"
  [ -e "runs/$name/teacher.index.json" ] && src="runs/$name/teacher.index.json"
  stage "$name-int8" python3 -m world_model.recipes.quantize "$src" --out "runs/$name-int8/teacher.safetensors"
  evaluate "T16-$name" "runs/$name-int8/teacher.safetensors" --steps 16
  echo "$(date +%T) rollout13 part done"
  exit 0
fi

# check_teacher NAME [denoise]: a continued teacher in runs/NAME to int8, then (with "denoise") its per-t
# denoising error, its pair effect against the shipped teacher T, and the 16-step evaluation (EVAL_ARGS).
check_teacher() {
  local name=$1 src="runs/$1/teacher.safetensors"
  [ -e "runs/$name/teacher.index.json" ] && src="runs/$name/teacher.index.json"
  stage "$name-int8" python3 -m world_model.recipes.quantize "$src" --out "runs/$name-int8/teacher.safetensors"
  if [ "${2:-}" = denoise ]; then
    mkdir -p "runs/eval/denoise-$name"
    stage "denoise-$name" python3 -m world_model.recipes.denoise_curve "runs/$name-int8/teacher.safetensors" "$T" \
      --json "runs/eval/denoise-$name/summary.json"
  fi
  mkdir -p "runs/eval/pairs-$name"
  stage "pairs-$name" python3 -m world_model.recipes.pair_effect "runs/$name-int8/teacher.safetensors" "$T" \
    --pairs 24 --json "runs/eval/pairs-$name/summary.json"
  [ "${CHECK:-full}" = pairs ] && return 0     # CHECK=pairs: stop at the pair effect (a short probe of a run)
  evaluate "T16-$name" "runs/$name-int8/teacher.safetensors" --steps 16 ${EVAL_ARGS:-}
}

# side_arm NAME OVERRIDES...: one of two teachers trained side by side on one GPU (TEACHER_MIN, cosine over
# TEACHER_TOTAL, WORKERS (7) unpinned collector workers each: pinned workers of two runs would share the first
# cores), then check_teacher. Pass --init "$T" among the overrides to continue the shipped teacher.
side_arm() {
  local name=teacher-$1; shift
  stage "$name" python3 -m world_model.recipes.train_teacher settings/train/teacher.yaml --out "runs/$name" \
    --set max_minutes="$TEACHER_MIN" --set total_minutes="$TEACHER_TOTAL" --set compile=true \
    --set data.collect.workers="${WORKERS:-7}" --set data.collect.pin=false --set data.max_chunks_per_step=2 "$@"
  check_teacher "$name"
}

# PART=fork14 (session 14, one H100): the shipped teacher continues for TEACHER_MIN on data with fork pairs
# (world_model/forks.py: one game state, the same prefix, then forward against backward held, or left/right
# turns and strafes, or walk/stop) under the pair loss (losses.py), one run per weight in WEIGHTS ("1 3"),
# side by side on the GPU with WORKERS (7) unpinned collector workers each (pinned workers of two runs would
# share the first cores); PAIR_ROWS pairs per batch, FORK_SHARE of the chunks made of pairs, pairs at
# t >= PAIR_T_MIN (0.7). Then int8, the per-t denoising error and the pair effect (recipes/pair_effect.py)
# against the shipped teacher, and the evaluation
# at 16 steps (EVAL_ARGS, e.g. --parts=tf,response). A run stops early if its held-out TF MSE rises GUARD (10%)
# above its start (train_teacher's guard_val_tf). Session 14 ran the first form of the loss (bell-weighted
# pairs at weight 2, and 2 against 6): the teacher lost the middle of the noise range (docs/EVALUATION.md).
# Session 15 ran this second form at weights 1 and 3 on one H200: no first-frame gain, and the 16-step response
# fell to 35% at weight 1 (docs/EVALUATION.md, session 15).
if [ "$PART" = fork14 ]; then
  arm() {  # arm WEIGHT
    local name=teacher-fork$1
    stage "$name" python3 -m world_model.recipes.train_teacher settings/train/teacher.yaml --out "runs/$name" --init "$T" \
      --set max_minutes="$TEACHER_MIN" --set total_minutes="$TEACHER_TOTAL" --set compile=true \
      --set data.collect.workers="${WORKERS:-7}" --set data.collect.pin=false --set data.max_chunks_per_step=2 \
      --set data.collect.fork.share="${FORK_SHARE:-0.5}" --set pair_rows="${PAIR_ROWS:-8}" --set loss.pair_weight="$1" \
      --set loss.pair_t_min="${PAIR_T_MIN:-0.7}" --set guard_val_tf="${GUARD:-0.1}"
    check_teacher "$name" denoise
  }
  for w in ${WEIGHTS:-1 3}; do arm "$w" & done
  wait
  echo "$(date +%T) fork14 part done"
  exit 0
fi

# PART=walls15 (prepared in session 15, for one H200, about 15 minutes): does data where forward from rest
# walks (docs/DATA.md, "Walls") raise the first-frame response? The shipped teacher continues for TEACHER_MIN
# (give 8, with TEACHER_TOTAL=50 as sessions 12-15) twice, side by side with WORKERS (7) unpinned collector
# workers each: "walls" with the policy's blocked_ticks 6, snap_start_prob 0.5 and open_start_prob OPEN
# (0.02), and "control" on the shipped models' data (session 12's control gained 3 points in 8 minutes on an
# H100). Then int8, pair_effect (tick 1 is
# the number to watch: 0.017 for forward/backward on the shipped teacher) and the 16-step evaluation
# (EVAL_ARGS, e.g. --parts=tf,response).
if [ "$PART" = walls15 ]; then
  side_arm walls --init "$T" --set data.collect.policy.blocked_ticks=6 --set data.collect.policy.snap_start_prob=0.5 \
    --set data.collect.policy.open_start_prob="${OPEN:-0.02}" &
  side_arm control --init "$T" &
  wait
  echo "$(date +%T) walls15 part done"
  exit 0
fi

# PART=abspos16 (session 16, one H200, about 20 minutes): does a learned absolute position per patch
# (model.abs_pos, zero at the start) let the teacher zoom on forward/backward? The shipped teacher continues for
# TEACHER_MIN (8, with TEACHER_TOTAL=50 as sessions 12-15) twice, side by side with WORKERS (7) unpinned
# collector workers each, both with clips holding a forward break drawn MOVE_WEIGHT (4) times as often (session
# 10: 24.3% move, 54.9% response): "abspos" with the table, "control" without. Then int8, pair_effect against
# the shipped teacher, and the 16-step evaluation: in full (drift included) for abspos, EVAL_ARGS
# (--parts=tf,response by default) for the control.
if [ "$PART" = abspos16 ]; then
  EVAL_ARGS= side_arm abspos --init "$T" --set move_weight="${MOVE_WEIGHT:-4}" --set model.abs_pos=true &
  EVAL_ARGS=${EVAL_ARGS:---parts=tf,response} side_arm control --init "$T" --set move_weight="${MOVE_WEIGHT:-4}" &
  wait
  echo "$(date +%T) abspos16 part done"
  exit 0
fi

# PART=scratch16 (session 16, one H200, about 12 minutes, with TEACHER_MIN=6 TEACHER_TOTAL=60): the same
# question from scratch, where nothing has to be unlearnt. Two new teachers train side by side (side_arm):
# "all" with every remedy built so far (model.abs_pos, model.action_momentum, move_weight 4, and the policy's
# blocked_ticks 6, snap_start_prob 0.5, open_start_prob 0.02), "plain" with the shipped teacher's recipe. At equal steps, pair_effect (tick 1 is the number to watch) and EVAL_ARGS
# (--parts=tf,response by default) say whether the remedies teach the action sooner.
if [ "$PART" = scratch16 ]; then
  export EVAL_ARGS=${EVAL_ARGS:---parts=tf,response}
  side_arm all --set model.abs_pos=true --set model.action_momentum=true --set move_weight=4 \
    --set data.collect.policy.blocked_ticks=6 --set data.collect.policy.snap_start_prob=0.5 \
    --set data.collect.policy.open_start_prob=0.02 &
  side_arm plain &
  wait
  echo "$(date +%T) scratch16 part done"
  exit 0
fi

# PART=patch17 (prepared in session 17 for one H200, about 20 minutes with TEACHER_MIN=8 TEACHER_TOTAL=50): does a
# per-patch action map (model.patch_action, zero at the start) let the teacher zoom on forward/backward? In the
# CPU zoom_toy it took the zoom pair effect from 0.01 to 0.80, where abs_pos did nothing (docs/EVALUATION.md,
# session 17). The shipped teacher continues for TEACHER_MIN alone on the GPU with the default 14 collector
# workers and move_weight MOVE_WEIGHT (4), as session 16's arms did but with twice their workers. Then int8,
# pair_effect against the shipped teacher (forward vs backward at tick 1: session 16's arms 0.026) and the
# full 16-step evaluation.
if [ "$PART" = patch17 ]; then
  stage teacher-patch python3 -m world_model.recipes.train_teacher settings/train/teacher.yaml --out runs/teacher-patch \
    --init "$T" --set max_minutes="$TEACHER_MIN" --set total_minutes="$TEACHER_TOTAL" --set compile=true \
    --set move_weight="${MOVE_WEIGHT:-4}" --set model.patch_action=true
  check_teacher teacher-patch
  echo "$(date +%T) patch17 part done"
  exit 0
fi

# PART=patchlr20 (prepared in session 20 for one H100, about 20 minutes with TEACHER_MIN=8 TEACHER_TOTAL=50):
# PART=patch17 again with the map at MAP_LR (30) times the rate (train_teacher's map_lr_mult). Session 20's
# patch17 ran the map at the cosine tail's 3e-5 to 4.7e-5 and its forward/backward effect at tick 1 moved only
# from 0.023 to 0.030; in the CPU zoom_toy the same continuation reached 0.12 at 1x, 0.56 at 10x and 0.69 at 30x
# (docs/EVALUATION.md, session 20). Everything else as patch17, so the two compare directly. COMPILE=false
# runs eager: more steps than compiled in a run of 2 minutes or less (the first compiled step takes 87 s).
# Session 24 added MOVE_PROB, MOVE_MIN and MOVE_TURN (policy.move_turn_prob, default 0) as in fresh17, defaults
# unchanged: a 12-minute teacher from scratch read no action at all (turn 0%), so held-move data can only be
# judged on a teacher that already reads turns. MOVE_PROB=0.2 MOVE_MIN=12 alone cut the shipped policy's mean
# |turn| input from 0.245 to 0.058; MOVE_TURN=0.5 brings it to 0.369 and keeps the held moves (docs/DATA.md, session 24).
if [ "$PART" = patchlr20 ]; then
  stage teacher-patchlr python3 -m world_model.recipes.train_teacher settings/train/teacher.yaml --out runs/teacher-patchlr \
    --init "$T" --set max_minutes="$TEACHER_MIN" --set total_minutes="$TEACHER_TOTAL" --set compile="${COMPILE:-true}" \
    --set move_weight="${MOVE_WEIGHT:-4}" --set model.patch_action=true --set map_lr_mult="${MAP_LR:-30}" \
    --set data.collect.policy.move_prob="${MOVE_PROB:-0.025}" --set data.collect.policy.move_min_ticks="${MOVE_MIN:-0}" \
    --set data.collect.policy.move_turn_prob="${MOVE_TURN:-0}"
  check_teacher teacher-patchlr
  echo "$(date +%T) patchlr20 part done"
  exit 0
fi

# PART=fresh17 (prepared in session 16 for one H200, about 25 minutes with TEACHER_MIN=16 TEACHER_TOTAL=16): one
# new teacher from scratch, alone on the GPU with the default 14 collector workers, with the remedies built so
# far: model.patch_action (session 17 put it in place of model.abs_pos, which the zoom_toy found useless),
# model.action_momentum, move_weight 4, the policy's blocked_ticks 6, snap_start_prob 0.5 and
# open_start_prob 0.02. At 16-17 steps/s it reaches about the shipped teacher's 18,625 steps, so the two compare
# at equal training. Then int8, pair_effect against the shipped teacher, and the full 16-step evaluation.
# Session 21's CPU toy with Doom's momentum read the first tick's zoom only with the map trained from the start
# (0.35; added late: 0.00 at 1x and 30x), and at the game's smaller first-tick effect (momentum 0.97) only 0.06
# even from the start: expect a small effect. A shorter form that fits a session with refusals: TEACHER_MIN=12
# TEACHER_TOTAL=12 EVAL_ARGS=--parts=tf,response (about 11,000 steps, 900 s of device time).
# Session 22 added BLIND (share of blind DF clips, default 0): the toy found no gain from them (docs/EVALUATION.md, session 22).
# Session 23 added MOVE_PROB and MOVE_MIN (policy.move_prob, default 0.025, and policy.move_min_ticks, default 0):
# the toy walked twice as far when its training clips held keys, and at 0.2 and 12 the data's holds against the
# motion triple (docs/DATA.md, session 23). Session 24 added MOVE_TURN (policy.move_turn_prob, default 0).
if [ "$PART" = fresh17 ]; then
  stage teacher-fresh python3 -m world_model.recipes.train_teacher settings/train/teacher.yaml --out runs/teacher-fresh \
    --set max_minutes="$TEACHER_MIN" --set total_minutes="$TEACHER_TOTAL" --set compile=true \
    --set model.patch_action=true --set model.action_momentum=true --set move_weight=4 \
    --set data.collect.policy.blocked_ticks=6 --set data.collect.policy.snap_start_prob=0.5 \
    --set data.collect.policy.open_start_prob=0.02 --set loss.blind_prob="${BLIND:-0}" \
    --set data.collect.policy.move_prob="${MOVE_PROB:-0.025}" --set data.collect.policy.move_min_ticks="${MOVE_MIN:-0}" \
    --set data.collect.policy.move_turn_prob="${MOVE_TURN:-0}"
  check_teacher teacher-fresh
  echo "$(date +%T) fresh17 part done"
  exit 0
fi

# PART=student14 (session 14, one H100, about 15 minutes): Stage A at guidance 3 from the teacher T (the shipped
# one unless T is set) for CM_MIN, int8, then its 1- and 2-step evaluations side by side (depth_student above).
if [ "$PART" = student14 ]; then
  depth_student full "${WORKERS:-14}"
  echo "$(date +%T) student14 part done"
  exit 0
fi

# PART=final13 (session 13, one H100, about 6 minutes): issue 6's targets in one run of the final code: eager
# against graphs-fused for the student and the teacher, and a 100k-tick memory soak of the player's engine.
if [ "$PART" = final13 ]; then
  stage bench-final python3 main.py bench --device cuda --ticks ${TICKS:-600} --warmup 50 --variants student1,teacher \
    --engines eager,graphs-fused --compile-decoder auto --memory-ticks ${MEMORY_TICKS:-100000} --json runs/bench/final.json
  echo "$(date +%T) final13 part done"
  exit 0
fi

# PART=driftseeds (prepared in session 12 for one H100, about 5 minutes): is the 2,000-tick drift check a
# property of the model or the luck of its one rollout? Eight teachers continued from the shipped one failed
# it (sessions 9-12, the unchanged control too), while the shipped one passed with 92.3% in range at seed 0.
# The same check at other noise seeds, for the shipped teacher (16 steps) and the shipped student (1 step):
if [ "$PART" = driftseeds ]; then
  for seed in ${SEEDS:-1 2 3}; do
    evaluate "drift-T16-s$seed" "$T" --steps 16 --parts drift --seed "$seed"
    evaluate "drift-S1-s$seed" "$S" --steps 1 --parts drift --seed "$seed"
  done
  echo "$(date +%T) driftseeds part done"
  exit 0
fi

# PART=tickab (one H100): the played tick against the code before it, carried as .carry/old.tgz (a `git
# archive` of the commit before the change; run from /tmp/old), alternating, RUNS pairs, the decoder compiled
# in the background as in PART=speed. Session 12: the tick as one CUDA graph, old = 73a9032. Session 13: warm
# ticks replay that graph straight from step_decoded (graphs._replay_tick), old = faca9b5; then the KV
# cache's read-time tables copied from per-phase rows (kv_cache._sync), old = d2d2bb5; then all layers' keys
# stored with one copy at advance (kv_cache.write stages them), old = 0c43272. Then the host
# segments of the new tick; EXTRAS=1 adds the kernel profile and the replay while the decoder compiles.
if [ "$PART" = tickab ]; then
  rm -rf /tmp/old && mkdir -p /tmp/old && tar xzf .carry/old.tgz -C /tmp/old && ln -s "$PWD/assets" /tmp/old/assets
  # The CUDA-only tests first (pytest carried as .carry/pyt where the machine has none).
  stage pytest-cuda env PYTHONPATH="$PYTHONPATH:$PWD/.carry/pyt" python3 -m pytest -q tests/test_graphs.py -k cuda
  ab() {  # ab NAME DIR
    stage "bench-$1" bash -c "cd $2 && PYTHONPATH=$2:/tmp/vz python3 main.py bench --device cuda --ticks ${TICKS:-600} \
      --warmup 50 --variants student1,teacher --engines graphs-fused --compile-decoder auto --json $PWD/runs/bench/$1.json"
  }
  for r in ${RUNS:-1 2}; do
    ab "old-$r" /tmp/old
    ab "new-$r" "$PWD"
  done
  stage tick-host python3 -m world_model.recipes.tick_host --json runs/bench/tick-host.json
  # The player's own loop, unpaced, stock decoder (play.yaml): timing.csv's step_ms, old then new.
  stage replay-old bash -c "cd /tmp/old && PYTHONPATH=/tmp/old:/tmp/vz python3 main.py replay \
    assets/traces/heldout-10100-long.jsonl --out $PWD/runs/replay-old --device cuda --no-video"
  stage replay-new python3 main.py replay assets/traces/heldout-10100-long.jsonl --out runs/replay-new --device cuda --no-video
  if [ "${EXTRAS:-0}" = 1 ]; then
    stage profile-new python3 -m world_model.recipes.profile_tick --json runs/bench/profile-new.json
    # Ticks while the decoder compiles in the background (cold inductor cache), unpaced: timing.csv's step_ms.
    sed 's/^\( *compile_decoder:\).*/\1 auto/' settings/play.yaml > runs/play-compile.yaml
    stage replay-compile env TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-cold python3 main.py replay \
      assets/traces/heldout-10100-long.jsonl --settings runs/play-compile.yaml --out runs/replay-compile --device cuda --no-video
  fi
  echo "$(date +%T) tickab part done"
  exit 0
fi

# PART=cm-pair: Stage A alone at the guidance scales in PAIR ("1 3"), side by side on one GPU (half the
# collectors each), each then evaluated at 1 and 2 steps. Session 2's Stage A student beat Stage A+B.
if [ "$PART" = cm-pair ]; then
  for s in ${PAIR:-1 3}; do
    ( stage "cm-cfg$s" python3 -m world_model.recipes.distill settings/train/distill_cm.yaml --out "runs/cm-cfg$s" \
        --set teacher="$T" --set max_minutes="$CM_MIN" --set total_minutes="$CM_MIN" --set cm.teacher_cfg="$s" \
        --set data.collect.workers=$((14 / $(echo ${PAIR:-1 3} | wc -w))) --set save_int8=true
      evaluate "cm-cfg$s-1" "runs/cm-cfg$s/student.safetensors" --steps 1 &
      evaluate "cm-cfg$s-2" "runs/cm-cfg$s/student.safetensors" --steps 2; wait ) &
  done
  wait
  echo "$(date +%T) cm pair done"
  exit 0
fi

# 1. Teacher: continue from the shipped weights and anneal (cosine over TEACHER_TOTAL minutes in all),
#    beside the guidance sweep of the shipped teacher (short drift: the sweep compares action response and
#    autoregressive PSNR; the chosen scale gets the full evaluation on the new teacher below).
# TEACHER_MIN=0 skips the slice (and, with CFG given, the sweep): distil the shipped teacher.
SWEEP_PID=
if [ -z "${CFG:-}" ] || [ "$TEACHER_MIN" != 0 ]; then
  for s in $SWEEP; do evaluate "sweep-cfg$s" assets/checkpoints/teacher.safetensors --steps 16 --cfg "$s" --drift-ticks 300; done &
  SWEEP_PID=$!
fi
[ "$TEACHER_MIN" != 0 ] && { stage teacher python3 -m world_model.recipes.train_teacher settings/train/teacher.yaml --out runs/teacher \
  --init assets/checkpoints/teacher.safetensors --set max_minutes="$TEACHER_MIN" \
  --set total_minutes="$TEACHER_TOTAL" --set compile=true \
|| stage teacher-eager python3 -m world_model.recipes.train_teacher settings/train/teacher.yaml --out runs/teacher \
  --init assets/checkpoints/teacher.safetensors --set max_minutes="$TEACHER_MIN" --set total_minutes="$TEACHER_TOTAL"; }
# A bf16 teacher is sharded (teacher.index.json + shards; checkpoint.load takes the .safetensors name for
# either). Sessions 2 and 3 tested only `-e teacher.safetensors` here, so session 2 distilled and evaluated
# at 16 steps the OLD shipped teacher while a new one sat in runs/teacher.
T=runs/teacher/teacher.safetensors
[ -e "$T" ] || [ -e runs/teacher/teacher.index.json ] || T=assets/checkpoints/teacher.safetensors
echo "$(date +%T) teacher for what follows: $T"
if [ -n "$SWEEP_PID" ]; then
  for _ in $(seq 60); do kill -0 "$SWEEP_PID" 2>/dev/null || break; sleep 5; done   # at most 5 more minutes
  kill "$SWEEP_PID" 2>/dev/null; pkill -f "runs/eval/sweep-cfg"; sleep 2           # choose among the finished
fi

# 2. The guidance scale: CFG, else runs/cfg, else the sweep's best action response among the scales whose
#    autoregressive PSNR @8 stays within 0.5 dB of the unguided teacher's.
CFG=${CFG:-$(cat runs/cfg 2>/dev/null || python3 -m world_model.recipes.choose_cfg runs/eval/sweep-cfg*)}
echo "$(date +%T) guidance scale $CFG"
echo "$CFG" > runs/cfg

# 3. Stage A (guided teacher steps), beside the new teacher's evaluation at the chosen scale.
# (a new teacher only: the shipped one's 16-step evaluation takes ~11 minutes beside training)
[ "$T" != assets/checkpoints/teacher.safetensors ] && evaluate teacher16 "$T" --steps 16 --cfg "$CFG" &
stage cm python3 -m world_model.recipes.distill settings/train/distill_cm.yaml --out runs/distill_cm \
  --set teacher="$T" --set max_minutes="$CM_MIN" --set total_minutes="$CM_MIN" --set cm.teacher_cfg="$CFG" \
|| stage cm-eager python3 -m world_model.recipes.distill settings/train/distill_cm.yaml --out runs/distill_cm \
  --set teacher="$T" --set max_minutes="$CM_MIN" --set total_minutes="$CM_MIN" --set cm.teacher_cfg="$CFG" \
  --set compile=false

# 4. Stage B (guided real score), beside Stage A's evaluations.
( evaluate A-1 runs/distill_cm/student.safetensors --steps 1
  evaluate A-2 runs/distill_cm/student.safetensors --steps 2 ) &
# (the critic's rollout replays CUDA graphs since session 9; if their capture fails, the same stage eagerly)
dmd=(settings/train/distill_dmd.yaml --out runs/distill_dmd --init runs/distill_cm/student.safetensors
     --set teacher="$T" --set dmd.real_cfg="$CFG" --set max_minutes="$DMD_MIN" --set total_minutes="$DMD_MIN")
stage dmd python3 -m world_model.recipes.distill "${dmd[@]}" \
|| stage dmd-eager python3 -m world_model.recipes.distill "${dmd[@]}" --set rollout.graphs=false
wait

# 5. The new student at 1 and 2 steps.
evaluate AB-1 runs/distill_dmd/student.safetensors --steps 1
evaluate AB-2 runs/distill_dmd/student.safetensors --steps 2
echo "$(date +%T) train part done"
