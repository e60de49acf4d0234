#!/usr/bin/env bash
# Issue 17's "TF32/bf16 where accuracy holds (measured)" on a lent GPU, as a second command of
# a GPU session (after benchmarks/gpu_session.sh), under 10 minutes:
#   OUT=<dir> TIKTOK_ROOT=<dir with tiktok/> bash benchmarks/gpu_precision.sh
# LightGCN and DHMRec on TikTok for EPOCHS epochs (default 20, the same seed) at each
# matmul_precision (highest: float32; high: TF32; medium: bfloat16 matmuls), by
# benchmarks/speed.py; prints s/epoch and the valid-selected test metrics of every run, and packs
# the runs into $OUT/precision.tar.gz. DEVICE=cpu EPOCHS=1 tries the script without a GPU.
set -u
OUT=${OUT:-runs/gpu-session}
WORK=${WORK:-/tmp/gpu-session}
EPOCHS=${EPOCHS:-20}
PY=${PY:-python3}
: "${TIKTOK_ROOT:?set TIKTOK_ROOT to the folder holding tiktok/}"
mkdir -p "$OUT" "$WORK/precision"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
for precision in highest high medium; do
    echo "== matmul_precision $precision ($(date -u +%T))"
    timeout "${PRECISION_S:-170}" $PY benchmarks/speed.py --dataset tiktok --models lightgcn dhmrec \
        --epochs "$EPOCHS" --device "${DEVICE:-cuda}" --data-root "$TIKTOK_ROOT" --no-eval-overhead \
        --out "$WORK/precision/$precision" --matmul_precision "$precision" \
        >"$WORK/precision/$precision.log" 2>&1
    echo "== exit $? ($(date -u +%T))"
    tail -3 "$WORK/precision/$precision.log"
done
$PY - "$WORK/precision" <<'PY'
import json, sys
from pathlib import Path
for result in sorted(Path(sys.argv[1]).glob("*/*/results.json")):
    r = json.loads(result.read_text())
    test = r["test"]
    print(
        f"{result.parent.parent.name:8s} {r['model']:9s} best epoch {r['best_epoch']:3d} "
        f"test R@20 {test['recall@20']:.4f} N@20 {test['ndcg@20']:.4f} "
        f"s/epoch {r['timing']['train_s_per_epoch']:.3f}"
    )
PY
tar -czf "$OUT/precision.tar.gz" -C "$WORK" precision 2>/dev/null
