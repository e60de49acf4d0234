#!/usr/bin/env bash
# The TikTok grids that do not fit on a 2-core CPU, on one lent GPU, in one command:
#   OUT=<dir> TIKTOK_ROOT=<folder holding tiktok/> bash benchmarks/gpu_grids.sh
# For each model of MODELS (default: the wave-2 grids still open in issues 18 and 19), WORKERS
# processes run `run.py --grid <model>` into one folder and share its points (a point another
# process trains is read when it ends), all models at once on the one GPU; the CPU's cores
# feed them. After LIMIT seconds (default 420: with the first short runs the whole stays under
# 10 minutes) the runs still going are stopped; every finished point (results.json, train.log,
# config.json; no checkpoints) is packed into $OUT/grids.tar.gz, so a cut run still returns
# what finished. DEVICE=cpu runs it on a CPU. Afterwards, on any machine, the same
# `run.py --grid <model> --output <unpacked>/<model> --device cuda` with the data at the same
# settings reads the finished points and trains only the missing ones.
set -u
OUT=${OUT:-runs/gpu-grids}
WORK=${WORK:-/tmp/gpu-grids}
MODELS=${MODELS:-damrs diffmm}
WORKERS=${WORKERS:-3}
LIMIT=${LIMIT:-420}
SEED=${SEED:-2024}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
: "${TIKTOK_ROOT:?TIKTOK_ROOT must name the folder that holds tiktok/}"
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
{
    date -u
    nvidia-smi -L
    echo "cores $(nproc --all); models $MODELS; $WORKERS workers each; limit ${LIMIT}s"
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# first one short run per model builds the dataset cache and the model's derived graphs (in
# parallel), so that a model's workers only read them
for model in $MODELS; do
    timeout 120 $PY run.py --model "$model" --dataset tiktok --data-root "$TIKTOK_ROOT" \
        --device "$DEVICE" --epochs 1 --max_steps_per_epoch 1 --quiet --baseline null \
        --output "$WORK/warm-$model" >"$WORK/warm-$model.log" 2>&1 &
done
wait
echo "caches built $(date -u +%T)"
pids=()
for model in $MODELS; do
    for worker in $(seq "$WORKERS"); do
        $PY run.py --model "$model" --dataset tiktok --data-root "$TIKTOK_ROOT" --device "$DEVICE" \
            --quiet --baseline null --seed "$SEED" --grid "$model" --output "$WORK/$model" \
            >"$WORK/$model-worker$worker.log" 2>&1 &
        pids+=($!)
    done
done
alive() {
    for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null && return 0
    done
    return 1
}
deadline=$((SECONDS + LIMIT))
while [ $SECONDS -lt $deadline ] && alive; do
    sleep 5
done
kill "${pids[@]}" 2>/dev/null
wait
date -u
(cd "$WORK" && find . -name results.json -o -name train.log -o -name config.json \
    -o -name 'grid.*' -o -name '*.log' | tar -czf "$OUT/grids.tar.gz" -T -)
for model in $MODELS; do
    done_points=$(find "$WORK/$model" -name results.json 2>/dev/null | wc -l)
    echo "$model: $done_points finished point(s)"
    [ -f "$WORK/$model/grid.md" ] && cat "$WORK/$model/grid.md"
done
