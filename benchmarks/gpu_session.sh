#!/usr/bin/env bash
# The checks of one lent GPU session (issue 17), in one command of under 10 minutes:
#   OUT=<dir> bash benchmarks/gpu_session.sh
# 1. the CUDA tests (in the background, on 4 of the cores);
# 2. benchmarks/scale.py at 1x-8x Sports' shape on cuda, eager: the four scales are generated in
#    parallel and their kNN graphs built on the GPU, then every model is measured alone;
# 3. the same table with torch.compile of the training step (datasets cached by step 2);
# 4. benchmarks/speed.py on TikTok (LightGCN and DHMRec) when TIKTOK_ROOT holds it.
# Each phase has its own time limit and packs its tables and logs into $OUT/<phase>.tar.gz as
# soon as it ends, so a phase cut short still returns what the phases before it measured.
set -u
OUT=${OUT:-runs/gpu-session}
WORK=${WORK:-/tmp/gpu-session}
DATA=${DATA:-$WORK/data}
mkdir -p "$OUT" "$WORK" "$DATA"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python3}
pack() { tar -czf "$OUT/$1.tar.gz" -C "$WORK" "$1" 2>/dev/null; }

{
    date -u
    nvidia-smi -L
    $PY -c 'import torch, torch_geometric as g; print("torch", torch.__version__, "pyg", g.__version__, torch.cuda.get_device_name())'
    echo "cores $(nproc)"
    free -g | head -2
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

(
    timeout 240 $PY -m pytest -q -p no:cacheprovider -n 4 -x \
        tests/test_derived_graph_device.py tests/test_graph.py tests/test_train_step.py \
        tests/test_metrics.py tests/test_grcn.py tests/test_train_cli.py \
        >"$OUT/cuda-tests.log" 2>&1
    echo "exit $?" >>"$OUT/cuda-tests.log"
) &
tests=$!

scale() {  # phase name, time limit in seconds, extra scale.py options
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date -u +%T), limit ${limit}s)"
    timeout "$limit" $PY benchmarks/scale.py --scales 1 2 4 8 --device cuda --steps 10 \
        --min-seconds 2 --data-root "$DATA" --out "$WORK/$name" --timeout 150 "$@"
    echo "== $name exit $? ($(date -u +%T))"
    pack "$name"
}

scale eager "${EAGER_S:-250}" --prepare-jobs 4
wait "$tests"
tail -3 "$OUT/cuda-tests.log"
scale compiled "${COMPILED_S:-230}" --compile --prepare-jobs 4

if [ -n "${TIKTOK_ROOT:-}" ]; then
    echo "== speed ($(date -u +%T))"
    mkdir -p "$WORK/speed"
    timeout "${SPEED_S:-60}" $PY benchmarks/speed.py --dataset tiktok --models lightgcn dhmrec \
        --epochs 2 --device cuda --data-root "$TIKTOK_ROOT" --out "$WORK/speed" \
        --no-eval-overhead >"$WORK/speed/speed.log" 2>&1
    echo "== speed exit $? ($(date -u +%T))"
    tail -5 "$WORK/speed/speed.log"
    pack speed
fi
