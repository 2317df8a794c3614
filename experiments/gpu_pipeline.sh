#!/usr/bin/env bash
# The real-model claim (issue 19) on one GPU lease, through `dsla-serve convert` and `dsla-serve eval` only
# (experiments/driver.py runs them; configs/smollm2-claim.yaml says what):
#
#   1. the reference model's cached Hugging Face folder, built from its GGUF; its fingerprint on CUDA
#      checked against tests/reference.py's FINGERPRINT (both printed);
#   2. phase A: run `order` (the default retrieval_delta order measured on the model) and run `timing`
#      (one layer at the claim's settings) side by side, the base model's evaluation beside them;
#      ORDER_LIST=0,27,... makes `order` convert in that list instead (one layer, one step: seconds
#      instead of 30 probes), for a lease that reuses an order measured before;
#      if `timing` fails, the claim runs with the PyTorch DSLA form (DSLA_BACKEND=torch), and if that
#      fails too, with `training.optimizer: adamw` (each fallback logged);
#   3. the steps per layer sized from `timing`'s steady tokens/s (its first step, with the kernel
#      compiles, left out) so that the conversions end by
#      TARGET_END_S seconds after this script started (clamped to [MIN_STEPS, MAX_STEPS]);
#   4. phase B: the six runs in parallel, in `order`'s order, each evaluated when it ends; conversions
#      still running at TARGET_END_S + SLACK_S are interrupted and evaluated at the depths they published.
#      PHASE_B_RUNS= (empty) stops after phase A; PHASE_A_DEADLINE_S bounds phase A the same way.
#
# It runs detached (`setsid`), so it outlives one device call; experiments/gpu_collect.sh waits for it and
# copies the results to $OUT. Needs runs/claim-data (experiments/prepare.py) and the model findable by
# its short name (docs/trainer.md, "On a GPU machine"). A CPU dry run at toy sizes:
#   CLAIM_CONFIG=experiments/configs/smoke.yaml ORDER_RUNS=dsla_s0 PHASE_B_RUNS=dsla_s1,gla_s0 \
#   SKIP_FINGERPRINT=1 GPU_PIPELINE_RUNS=runs/dry experiments/gpu_pipeline.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
RUNS=${GPU_PIPELINE_RUNS:-runs/claim}
CONFIG=${CLAIM_CONFIG:-experiments/configs/smollm2-claim.yaml}
ORDER_RUNS=${ORDER_RUNS:-order,timing}
TIMING_RUN=${TIMING_RUN:-timing}
PHASE_B_RUNS=${PHASE_B_RUNS-dsla_s0,dsla_s1,gla_s0,gla_s1,swa_s0,swa_s1}   # empty: phase A only
TARGET_END_S=${TARGET_END_S:-390}   # phase B's conversions should end by then (seconds after this script started)
SLACK_S=${SLACK_S:-45}
MIN_STEPS=${MIN_STEPS:-10}
MAX_STEPS=${MAX_STEPS:-400}
LONGEST=${LONGEST:-22}              # layers of the longest run (3L/4 of 30)
DEVICE=${DEVICE:-}
log() { echo "[$(date -u +%H:%M:%S) +${SECONDS}s] $*"; }
mkdir -p "$RUNS"
rm -f "$RUNS/pipeline.done" "$RUNS/pipeline.failed"
fail() { log "FAILED: $*"; echo "$*" > "$RUNS/pipeline.failed"; exit 1; }
device_args=(); [ -n "$DEVICE" ] && device_args=(--device "$DEVICE")

log "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)"
python3 -c 'import torch, triton, transformers; print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__)' 2>&1
python3 -c 'import deepspeed, pydantic; print("deepspeed", deepspeed.__version__, "pydantic", pydantic.__version__)' 2>&1 | tail -1

if [ -z "${SKIP_FINGERPRINT:-}" ]; then
  log "model: the cached folder of smollm2-135m, and its fingerprint on CUDA"
  python3 - <<'PY' || fail "the reference model (see above)"
import torch
from dsla_serve.model.fingerprint import model_fingerprint
from dsla_serve.model.loading import load_model_and_tokenizer
from dsla_serve.model.loading import resolve_model
from tests.reference import FINGERPRINT
print("folder", resolve_model("smollm2-135m"), flush=True)
model, _ = load_model_and_tokenizer("smollm2-135m", dtype="bfloat16", device="cuda")
got = model_fingerprint(model)
print("fingerprint on", torch.cuda.get_device_name(), got)
print("tests/reference.py       ", FINGERPRINT, "equal" if got == FINGERPRINT else "DIFFERENT")
raise SystemExit(0 if got == FINGERPRINT else 1)
PY
fi

override='{}'
phase_a_override='{}'   # the order run's fixed list (ORDER_LIST); a run's own settings win over it
[ -n "${ORDER_LIST:-}" ] && phase_a_override="{\"order\": {\"method\": \"list\", \"layers\": [$ORDER_LIST]}}"
phase_a_deadline=(); [ -n "${PHASE_A_DEADLINE_S:-}" ] && \
  phase_a_deadline=(--deadline-min "$(python3 -c "print(max(0.2, ($PHASE_A_DEADLINE_S - $SECONDS) / 60))")")
phase_a() {  # $1: the log's name; $2: the optimiser override merged over the order list
  local merged
  merged=$(python3 -c "import json,sys; a=json.loads(sys.argv[1]); a.update(json.loads(sys.argv[2])); print(json.dumps(a))" \
    "$phase_a_override" "$2")
  if [ "$1" != phase-a.log ]; then  # a retry: the failed attempt's partial artifacts would be resumed
    for r in ${ORDER_RUNS//,/ }; do rm -rf "${RUNS:?}/runs/$r"; done
  fi
  python3 -m experiments.driver "$CONFIG" --out "$RUNS" --runs "$ORDER_RUNS" --workers 2 --override "$merged" \
    "${device_args[@]}" "${phase_a_deadline[@]}" > "$RUNS/$1" 2>&1
}
timing_ok() { python3 -c "import json,sys; m=json.load(open('$RUNS/runs/$TIMING_RUN/artifact/manifest.json')); sys.exit(0 if m['layers'] else 1)" 2>/dev/null; }
log "phase A: runs $ORDER_RUNS (order, timing) and the base model's evaluation${ORDER_LIST:+; order list $ORDER_LIST}"
phase_a phase-a.log '{}'
if ! timing_ok; then
  log "phase A failed with the Triton kernels (DSLA_BACKEND=${DSLA_BACKEND:-auto}); tail of the timing log:"
  tail -n 15 "$RUNS/runs/$TIMING_RUN/convert.log"
  export DSLA_BACKEND=torch
  log "retrying phase A with DSLA_BACKEND=torch (the rest of the claim keeps it)"
  phase_a phase-a-torch.log '{}'
fi
if ! timing_ok; then
  log "phase A failed with the default optimiser (DeepSpeed); tail of the timing log:"
  tail -n 15 "$RUNS/runs/$TIMING_RUN/convert.log"
  override='{"training": {"optimizer": "adamw"}}'
  log "retrying phase A with $override"
  phase_a phase-a-adamw.log "$override"
  timing_ok || fail "phase A (see $RUNS/runs/$TIMING_RUN/convert.log)"
fi
log "DSLA backend: ${DSLA_BACKEND:-auto}, optimiser override: $override"
log "order: $(python3 -c "import json; m=json.load(open('$RUNS/runs/${ORDER_RUNS%%,*}/artifact/manifest.json')); print(m['metadata']['order']['method'], m['order'])" 2>/dev/null)"
if [ -z "$PHASE_B_RUNS" ]; then  # phase A only (a lease too short for the claim's conversions)
  python3 -m experiments.driver "$CONFIG" --out "$RUNS" --report-only > /dev/null 2>&1
  log "phase A only (PHASE_B_RUNS is empty)"
  touch "$RUNS/pipeline.done"
  exit 0
fi

steps=$(python3 - "$RUNS/runs/$TIMING_RUN/artifact/manifest.json" "$SECONDS" <<PY
import json, sys
m = json.load(open(sys.argv[1]))["layers"][0]["metrics"]
now = float(sys.argv[2])
rate = m.get("train_tokens_per_s_steady") or m["train_tokens_per_s"]  # without the first step's compiles
s_step = m["train_tokens"] / m["steps"] / rate  # seconds per step, measured beside the order run
# Phase B: six processes share the GPU (each ~2x slower than beside one other), the longest run converts
# $LONGEST layers, 15 of them beside the others and the rest alone; 30 s of start-up, 5 s per layer of
# calibration, validation and engine set-up.
available = $TARGET_END_S - now - 30 - 5 * $LONGEST
steps = int(available / (s_step * (2 * 15 + 0.7 * ($LONGEST - 15))))
print(max($MIN_STEPS, min($MAX_STEPS, steps)))
print(f"timing: {s_step:.3f} s per step beside the order run ({rate:.0f} tokens/s steady, "
      f"{m['train_tokens_per_s']:.0f} with the first step); "
      f"{available:.0f} s available -> {steps} steps", file=sys.stderr)
PY
) || fail "sizing"
override=$(python3 -c "import json,sys; o=json.loads(sys.argv[1]); o.setdefault('training', {})['steps']=int(sys.argv[2]); print(json.dumps(o))" "$override" "$steps")
deadline=$(python3 -c "print(max(0.5, ($TARGET_END_S + $SLACK_S - $SECONDS) / 60))")
log "phase B: runs $PHASE_B_RUNS with $override, deadline in $deadline min"
python3 -m experiments.driver "$CONFIG" --out "$RUNS" --runs "$PHASE_B_RUNS" --workers 6 --override "$override" \
  --deadline-min "$deadline" "${device_args[@]}" > "$RUNS/phase-b.log" 2>&1
code=$?
python3 -m experiments.driver "$CONFIG" --out "$RUNS" --report-only > /dev/null 2>&1
log "phase B ended (driver exit code $code)"
touch "$RUNS/pipeline.done"
