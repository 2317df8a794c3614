#!/usr/bin/env bash
# Issue 7 on one GPU lease, start to end: the reference teacher (recipes/teacher/train.sh), then the
# quality campaign on it (configs/quality.json) beside the single-layer probes (experiments/layer_probe.py
# at the campaign's settings), then the budget study (configs/quality-budget.json).
#
# It runs detached (`setsid`), so it outlives the 10-minute limit of one device call and never has to
# reload or re-send the teacher between calls; `experiments/gpu_collect.sh` waits for it and copies
# what is done to $OUT. Every step resumes: rerunning skips a finished teacher and finished runs.
# Needs runs/teacher/tokenizer, runs/teacher/data (python -m recipes.teacher.train_tokenizer) and
# runs/quality-data (python -m experiments.prepare); experiments/README.md has the whole sequence.
#
# A dry run on the CPU at toy sizes (each variable's words go last, so they win over the defaults):
#   GPU_PIPELINE_RUNS=runs/dry TEACHER_ARGS="--smoke --steps 3 ..." QUALITY_ARGS=--smoke \
#   BUDGET_ARGS="--config experiments/configs/quality-smoke.json --runs dsla,gla" \
#   PROBE_ARGS="--config experiments/configs/quality-smoke.json" experiments/gpu_pipeline.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
RUNS=${GPU_PIPELINE_RUNS:-runs}
read -r -a teacher_args <<< "${TEACHER_ARGS:-}"
read -r -a quality_args <<< "${QUALITY_ARGS:-}"
read -r -a budget_args <<< "${BUDGET_ARGS:-}"
read -r -a probe_args <<< "${PROBE_ARGS:-}"
log() { echo "[$(date -u +%H:%M:%S)] $*"; }
mkdir -p "$RUNS"
rm -f "$RUNS/pipeline.done" "$RUNS/pipeline.failed"
fail() { log "FAILED: $*"; echo "$*" > "$RUNS/pipeline.failed"; exit 1; }

log "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)"
python3 -c 'import torch, triton, transformers; print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__)'

# The campaign's code on this GPU at toy sizes, beside the teacher's training (the GPU has room for both):
# a failure here shows up in the first call's output while there is still time to fix it.
[ -n "${SKIP_SMOKE:-}" ] || ( python3 -m pytest -q -p no:cacheprovider tests/quality/test_experiments.py > "$RUNS/gpu-smoke.log" 2>&1
  echo "exit code $?" >> "$RUNS/gpu-smoke.log" ) &

if [ ! -f "$RUNS/teacher/model/training.json" ]; then  # written last, once the teacher is saved and measured
  log "teacher: recipes/teacher/train.sh"
  TEACHER_RUN="$RUNS/teacher" recipes/teacher/train.sh --quiet --time-budget-min 60 "${teacher_args[@]}" > "$RUNS/teacher.log" 2>&1 \
    || fail "teacher training (see teacher.log)"
  rm -f "$RUNS"/teacher.tar.part-* "$RUNS/teacher.tar.ready"
  # in 15 MB parts: a device call returns files of at most 16 MiB
  tar -C "$RUNS/teacher" --exclude checkpoint -cf - model | split -b 15M - "$RUNS/teacher.tar.part-" \
    && touch "$RUNS/teacher.tar.ready"
fi
log "teacher saved: $(python3 -c "import json; f = json.load(open('$RUNS/teacher/model/training.json'))['final']; \
print('ppl', round(f['perplexity']['overall']['ppl'], 2), 'passkey', [r['accuracy'] for r in f['passkey']['rows']])")"
wait  # the smoke test

# The probes share the GPU with the campaign's workers from the start: one process leaves it mostly idle.
probes=
if [ -z "${SKIP_PROBES:-}" ]; then
  log "single-layer probes (experiments.layer_probe, the campaign's settings), beside the campaign"
  python3 -m experiments.layer_probe --config experiments/configs/quality.json --teacher "$RUNS/teacher/model" \
    --data "$RUNS/quality-data" --out "$RUNS/layer-probe" "${probe_args[@]}" > "$RUNS/layer-probe.log" 2>&1 &
  probes=$!
fi
log "campaign: experiments.quality (configs/quality.json)"
python3 -m experiments.quality --teacher "$RUNS/teacher/model" --data "$RUNS/quality-data" --out "$RUNS/quality" \
  --workers "${QUALITY_WORKERS:-5}" "${quality_args[@]}" > "$RUNS/quality.log" 2>&1 || fail "campaign (see quality.log)"

if [ -z "${SKIP_BUDGET:-}" ]; then
  log "budget study: experiments.quality (configs/quality-budget.json)"
  mkdir -p "$RUNS/quality-budget"
  cp "$RUNS/quality/teacher.json" "$RUNS/quality/orders.json" "$RUNS/quality-budget/"  # the same teacher and order
  python3 -m experiments.quality --config experiments/configs/quality-budget.json --teacher "$RUNS/teacher/model" \
    --data "$RUNS/quality-data" --out "$RUNS/quality-budget" --workers 2 "${budget_args[@]}" > "$RUNS/quality-budget.log" 2>&1 \
    || fail "budget study (see quality-budget.log)"
fi
[ -z "$probes" ] || wait "$probes" || fail "single-layer probes (see layer-probe.log)"
log "all done"
touch "$RUNS/pipeline.done"
