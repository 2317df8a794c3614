#!/usr/bin/env bash
# Wait up to $1 seconds (default 540) for experiments/gpu_pipeline.sh to finish, then copy what it has
# made so far to $OUT: results.tgz (logs, teacher report and plots, campaign results) and, once, the
# teacher's weights as 15 MB tar parts. Prints where each step stands. One device call each; the
# pipeline runs on between calls while the machine stays warm.
set -u
cd "$(dirname "$0")/.."
RUNS=${GPU_PIPELINE_RUNS:-runs}
limit=${1:-540}
while [ ! -f "$RUNS/pipeline.done" ] && [ ! -f "$RUNS/pipeline.failed" ] && [ "$SECONDS" -lt "$limit" ]; do
  sleep 5
done
wanted=(pipeline.log gpu-smoke.log teacher.log quality.log quality-budget.log quality quality-budget
        teacher/model/training.json teacher/model/training_curve.png teacher/model/training_stages.png
        teacher/stage1/training.json teacher/stage2/training.json teacher/stage3/training.json)
present=()
for p in "${wanted[@]}"; do [ -e "$RUNS/$p" ] && present+=("$p"); done
[ ${#present[@]} -gt 0 ] && tar -C "$RUNS" -czf "$OUT/results.tgz" "${present[@]}"
if compgen -G "$RUNS/teacher.tar.part-*" > /dev/null && [ ! -f "$RUNS/teacher.sent" ]; then
  cp "$RUNS"/teacher.tar.part-* "$OUT/" && touch "$RUNS/teacher.sent"
fi
shown() { [ -f "$RUNS/$1" ] && { echo "--- $1"; tr '\r' '\n' < "$RUNS/$1" | grep -v -E '[0-9]+%\|' | tail -n "$2"; }; }
shown gpu-smoke.log 6; shown teacher.log 8; shown quality.log 25; shown quality-budget.log 10; shown pipeline.log 12
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null
ls "$RUNS"/quality/runs "$RUNS"/quality-budget/runs 2>/dev/null | tr '\n' ' '; echo
[ -f "$RUNS/pipeline.done" ] && echo "PIPELINE DONE"
[ -f "$RUNS/pipeline.failed" ] && echo "PIPELINE FAILED: $(cat "$RUNS/pipeline.failed")"
exit 0
