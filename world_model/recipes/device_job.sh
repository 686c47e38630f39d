#!/usr/bin/env bash
# Drive h100_pipeline.sh on the lent GPU machine with short, fixed calls (docs/GPU.md).
#
#   bash world_model/recipes/device_job.sh start JOB [VAR=VALUE ...]   (from the repository root of a call)
#   bash world_model/recipes/device_job.sh watch JOB [SECONDS]
#
# start: copies the working tree to /tmp/JOB (so later calls, which bring a fresh copy of the tree, cannot
#   change a running job), unpacks the ViZDoom carry (.carry/vizdoom312.tar.xz) and starts the pipeline with
#   the given variables (e.g. PART=next CM_MIN=8) in the background, then watches for 60 s.
# watch: stops at once with exit 3 on a fresh machine (the job is gone); otherwise waits up to SECONDS (240)
#   until a stage finishes or the pipeline ends, prints the pipeline log and each running stage's last
#   progress line, and copies to $OUT every checkpoint that finished since the last call (at most 7, each
#   under 16 MiB) and one archive of all small results so far (metrics.json, windows.csv, table.md, bench
#   JSON, training summaries and CSVs).
# Why: the machine goes back 30 s after a call returns, so the next call must be sent at once and must not
# need thinking; and what is not copied out in a call is lost with the machine (sessions 5, 8 and 9).
set -u
cmd=${1:?start or watch}; job=/tmp/${2:?JOB name}; shift 2

watch() {
  local wait_s=${1:-240}
  cd "$job" 2>/dev/null && [ -e runs/logs/pipeline.log ] || { echo "FRESH MACHINE: no job at $job"; exit 3; }
  local before; before=$(ls runs/done 2>/dev/null)
  for _ in $(seq $((wait_s / 5))); do
    [ "$(ls runs/done 2>/dev/null)" != "$before" ] && break
    grep -q "part done" runs/logs/pipeline.log && break
    sleep 5
  done
  echo "== pipeline"; tail -n 25 runs/logs/pipeline.log
  for f in runs/logs/*.log; do
    name=$(basename "$f" .log); [ -e "runs/done/$name" ] && continue; [ "$name" = pipeline ] && continue
    echo "== $name: $(tr '\r' '\n' < "$f" | grep -v '^\s*$' | tail -n 1 | cut -c1-200)"
  done
  mkdir -p runs/sent "$OUT"
  local sent=0
  for ckpt in runs/*/teacher.safetensors runs/*/student.safetensors; do
    [ -e "$ckpt" ] || continue
    local dir; dir=$(dirname "$ckpt"); local stage=${dir#runs/}
    [ -e "runs/done/$stage" ] || continue                      # only finished stages: no half-written files
    local tag; tag=$(echo "$ckpt" | tr / -)
    [ -e "runs/sent/$tag" ] && continue
    [ "$(stat -c %s "$ckpt")" -lt 16777216 ] || { echo "too large to send: $ckpt"; continue; }
    [ $sent -lt 7 ] || break
    cp "$ckpt" "$OUT/$tag" && touch "runs/sent/$tag" && sent=$((sent + 1)) && echo "sent $ckpt"
  done
  find runs -maxdepth 3 \( -name metrics.json -o -name windows.csv -o -name probes.csv -o -name timing.csv -o -name table.md -o -name 'summary*.json' \
      -o -path 'runs/bench/*.json' -o -path 'runs/logs/*.log' -o -name 'metrics.csv' -o -name '*.png' \) -size -2M 2>/dev/null \
    | tar czf "$OUT/results.tgz" -T - 2>/dev/null && echo "results.tgz: $(tar tzf "$OUT/results.tgz" | wc -l) files"
}

case "$cmd" in
  start)
    rm -rf "$job" && mkdir -p "$job" || exit 1
    cp -r $(ls -A | grep -v -x -e .git -e .whl -e runs -e out) "$job"/ || exit 1
    cd "$job" || exit 1
    mkdir -p /tmp/vz && tar xJf .carry/vizdoom312.tar.xz -C /tmp/vz || { echo "no ViZDoom carry"; exit 1; }
    export PYTHONPATH=/tmp/vz:$PWD PYTHONUNBUFFERED=1
    python3 -c "import vizdoom" || exit 1
    nvidia-smi -L
    mkdir -p runs/logs
    : > runs/logs/pipeline.log   # before the launch: the watch below checks for it at once (session 13 raced it)
    (env "$@" setsid nohup bash world_model/recipes/h100_pipeline.sh >> runs/logs/pipeline.log 2>&1 < /dev/null &)
    watch 60 ;;
  watch) watch "${1:-240}" ;;
  *) echo "usage: device_job.sh start|watch JOB ..."; exit 2 ;;
esac
