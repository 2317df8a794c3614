#!/usr/bin/env bash
# The teacher recipe in four stages (see README.md). Stages 1-2: short rows dense with retrieval
# episodes, so that copying is learnt within a few thousand steps, then 4096-token rows from those
# weights. Stages 3-4 repeat the pair from stage 2's weights with new batches (seed 1), answer tokens
# weighted more, and few copy rows. On the H200 run of 2026-12-03 stages 1-2 alone gave a good
# language model (validation perplexity 48.5) that copies random tokens but retrieves nothing (passkey
# and MQAR 0%): the answer loss sat at 0.48 from step 1400 to 4000, which is copy answers (71% of
# stage 1's answer tokens, so of the answer term's gradient) solved and the recall/passkey answers
# (29%) stuck at ~1.65 nats each. Stage 3 gives recall and passkey 79% of the answer tokens instead.
#
# Extra arguments go to every stage (e.g. --time-budget-min, --device). Rerunning resumes: a stage
# whose folder holds training.json (written last) is skipped, a stage stopped by its time budget
# continues from its checkpoint, and stage 1 is skipped once stage 2 is complete.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${TEACHER_RUN:-runs/teacher}
complete() { [ -f "$RUN/$1/training.json" ]; }
SHORT_ROWS=(--seq-len 512 --batch-size 32 --warmup 100 --passkey-min-len 64 --passkey-ramp-steps 0
            --recall-max-pairs 24 --copy-min-len 8 --copy-max-len 128 --eval-every 500 --checkpoint-every 1000
            --final-passkey-lengths 256,512 --final-recall-pairs 8,16 --final-episodes 50 --final-windows 64
            --save-dtype float32)

if ! complete stage2; then
  complete stage1 || python -m recipes.teacher.train --out "$RUN/stage1" "${SHORT_ROWS[@]}" --steps 4000 \
    --passkey-fraction 0.25 --recall-fraction 0.2 --copy-fraction 0.3 "$@"
  python -m recipes.teacher.train --out "$RUN/stage2" --init-from "$RUN/stage1" --steps 800 \
    --passkey-ramp-steps 400 --copy-fraction 0.1 "$@"
fi
complete stage3 || python -m recipes.teacher.train --out "$RUN/stage3" --init-from "$RUN/stage2" --seed 1 \
  "${SHORT_ROWS[@]}" --steps 2500 --lr 1e-3 --answer-loss-weight 3 \
  --passkey-fraction 0.4 --recall-fraction 0.3 --copy-fraction 0.05 "$@"
complete model || python -m recipes.teacher.train --out "$RUN/model" --init-from "$RUN/stage3" --seed 1 \
  --steps 400 --lr 1e-3 --warmup 50 --passkey-ramp-steps 200 --answer-loss-weight 3 --passkey-fraction 0.4 \
  --recall-fraction 0.2 --copy-fraction 0.02 "$@"

stages=() labels=()
for s in stage1:"stage 1: 512-token rows" stage2:"stage 2: 4096-token rows" \
         stage3:"stage 3: 512-token rows (seed 1)" model:"stage 4: 4096-token rows (seed 1)"; do
  if complete "${s%%:*}"; then stages+=("$RUN/${s%%:*}"); labels+=("${s#*:}"); fi
done
python -m recipes.teacher.plot "${stages[@]}" --labels "$(IFS=,; echo "${labels[*]}")" \
  --out "$RUN/model/training_stages.png"
