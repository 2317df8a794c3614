#!/usr/bin/env bash
# Wait up to $1 seconds (default 540) for experiments/gpu_pipeline.sh to finish, copying what it has
# made so far to $OUT every 30 s (so a call stopped at its limit still returns the latest):
# results.tgz (logs, teacher reports and plots, campaign results) and, once, the teacher's weights as
# 15 MB tar parts. Prints where each step stands. One device call each; the pipeline runs on between
# calls while the machine stays warm.
set -u
cd "$(dirname "$0")/.."
RUNS=${GPU_PIPELINE_RUNS:-runs}
limit=${1:-540}
# Everything under $RUNS except what was carried in or is sent apart: the corpora, the tokenizer, the
# teacher's weights and checkpoints (parts below). Any results folder a command line adds comes back too.
excluded=(--exclude=./quality-data --exclude=./teacher/data --exclude=./teacher/tokenizer --exclude='*.safetensors'
          --exclude=checkpoint --exclude='./teacher.tar.*' --exclude=./teacher.sent)

snapshot() {
  tar -C "$RUNS" -czf "$OUT/.results.tgz" "${excluded[@]}" . 2>/dev/null && mv "$OUT/.results.tgz" "$OUT/results.tgz"
  if [ -f "$RUNS/teacher.tar.ready" ] && [ ! -f "$RUNS/teacher.sent" ]; then
    cp "$RUNS"/teacher.tar.part-* "$OUT/" && touch "$RUNS/teacher.sent"
  fi
}

last=-30
while [ ! -f "$RUNS/pipeline.done" ] && [ ! -f "$RUNS/pipeline.failed" ] && [ "$SECONDS" -lt "$limit" ]; do
  if [ $((SECONDS - last)) -ge 30 ]; then snapshot; last=$SECONDS; fi
  sleep 5
done
snapshot
shown() { [ -f "$RUNS/$1" ] && { echo "--- $1"; tr '\r' '\n' < "$RUNS/$1" | grep -v -E '[0-9]+%\|' | grep -v '^$' | tail -n "$2"; }; }
for log in "$RUNS"/*.log; do [ "${log##*/}" = pipeline.log ] || shown "${log##*/}" 10; done
shown pipeline.log 12
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null
ls "$RUNS"/quality/runs "$RUNS"/quality-budget/runs 2>/dev/null | tr '\n' ' '; echo
[ -f "$RUNS/pipeline.done" ] && echo "PIPELINE DONE"
[ -f "$RUNS/pipeline.failed" ] && echo "PIPELINE FAILED: $(cat "$RUNS/pipeline.failed")"
exit 0
