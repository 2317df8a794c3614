#!/usr/bin/env bash
# Wait up to $1 seconds (default 540) for experiments/gpu_pipeline.sh to finish, copying what it has made
# to $OUT every 30 s (so a call stopped at its limit still returns the latest): results.tgz holds every
# file under the results folder but the layers' weights (the manifests keep their sha256 and metrics).
# Prints where each step stands. One device call each; the pipeline runs on between calls while the
# machine stays warm.
set -u
cd "$(dirname "$0")/.."
RUNS=${GPU_PIPELINE_RUNS:-runs/claim}
limit=${1:-540}

snapshot() {
  tar -C "$RUNS" -czf "$OUT/.results.tgz" --exclude='*.safetensors' . 2>/dev/null && mv "$OUT/.results.tgz" "$OUT/results.tgz"
}

last=-30
while [ ! -f "$RUNS/pipeline.done" ] && [ ! -f "$RUNS/pipeline.failed" ] && [ "$SECONDS" -lt "$limit" ]; do
  if [ $((SECONDS - last)) -ge 30 ]; then snapshot; last=$SECONDS; fi
  sleep 3
done
snapshot
for f in "$RUNS"/pipeline.log "$RUNS"/phase-*.log; do [ -f "$f" ] && { echo "--- ${f##*/}"; tail -n 25 "$f"; }; done
for f in "$RUNS"/runs/*/convert.log; do
  [ -f "$f" ] && { echo "--- $f"; tr '\r' '\n' < "$f" | grep -v '^$' | grep -v -i warn | tail -n 4; }
done
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null
[ -f "$RUNS/summary.md" ] && sed -n '/## Targets/,/## Distillation/p' "$RUNS/summary.md"
[ -f "$RUNS/pipeline.done" ] && echo "PIPELINE DONE"
[ -f "$RUNS/pipeline.failed" ] && echo "PIPELINE FAILED: $(cat "$RUNS/pipeline.failed")"
exit 0
