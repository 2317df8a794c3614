#!/usr/bin/env bash
# The teacher recipe in two stages (see README.md): short rows dense with retrieval episodes first,
# so that copying is learnt within a few thousand steps, then 4096-token rows from those weights.
# Extra arguments go to both stages (e.g. --time-budget-min, --device). Rerunning resumes: a stage
# whose model folder is complete is skipped, a stage stopped by its time budget continues.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${TEACHER_RUN:-runs/teacher}

if [ ! -f "$RUN/stage1/config.json" ]; then
  python -m recipes.teacher.train --out "$RUN/stage1" --seq-len 512 --batch-size 32 --steps 4000 \
    --warmup 100 --passkey-min-len 64 --passkey-ramp-steps 0 --recall-max-pairs 24 \
    --passkey-fraction 0.25 --recall-fraction 0.2 --copy-fraction 0.3 --copy-min-len 8 --copy-max-len 128 \
    --eval-every 500 --checkpoint-every 1000 --final-passkey-lengths 256,512 --final-recall-pairs 8,16 \
    --final-episodes 50 --final-windows 64 --save-dtype float32 "$@"
fi
python -m recipes.teacher.train --out "$RUN/model" --init-from "$RUN/stage1" --steps 800 \
  --passkey-ramp-steps 400 --copy-fraction 0.1 "$@"
python -m recipes.teacher.plot "$RUN/stage1" "$RUN/model" --labels "stage 1: 512-token rows,stage 2: 4096-token rows" \
  --out "$RUN/model/training_stages.png"
