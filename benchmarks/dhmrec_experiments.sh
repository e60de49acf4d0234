#!/usr/bin/env bash
# Issue-3 experiments: DHMRec vs LightGCN under the same search budget (8 grid points each,
# selected on VALID Recall@20), DHMRec's five ablations at the selected point, on TikTok and on
# the synthetic default. Usage: DATA_ROOT=../shared/data DEVICE=cuda bash benchmarks/dhmrec_experiments.sh
set -u
DATA_ROOT=${DATA_ROOT:-../shared/data}
DEVICE=${DEVICE:-auto}
OUT=${RUNS:-runs/bench}
B="python benchmarks/benchmark.py --device $DEVICE --out $OUT"
STAGE_TIMEOUT=${STAGE_TIMEOUT:-3000}

# Build the processed caches once, before parallel runs read them.
python -c "
from pyg_dhmrec.config import load_config
from pyg_dhmrec.data.dataset import load_dataset
for name, root in (('tiktok', '$DATA_ROOT'), ('synthetic', 'datasets')):
    print(load_dataset(load_config('lightgcn', name, {'data_root': root})))
"

timeout "$STAGE_TIMEOUT" $B --model lightgcn --dataset tiktok --data-root "$DATA_ROOT" --jobs 8 \
  --grid num_layers=1,2,3,4 --grid reg_weight=1e-2,1e-4 &
timeout "$STAGE_TIMEOUT" $B --model dhmrec --dataset tiktok --data-root "$DATA_ROOT" --jobs 8 \
  --grid alpha_mm=0.2,0.5,1.0,1.5 --grid gamma_kl=0.1,1.0 &
timeout "$STAGE_TIMEOUT" $B --model lightgcn --dataset synthetic --jobs 4 \
  --grid num_layers=1,2,3,4 --grid reg_weight=1e-4 &
timeout "$STAGE_TIMEOUT" $B --model dhmrec --dataset synthetic --jobs 4 \
  --grid alpha_mm=0.2,0.5,1.0,1.5 --grid gamma_kl=1.0 &
wait

# Ablations at the DHMRec point selected on valid.
for dataset in tiktok synthetic; do
  selected="$OUT/dhmrec-$dataset/selected.json"
  [ -f "$selected" ] || continue
  args=$(python -c "import json,sys; print(' '.join(f'--{k} {v}' for k, v in json.load(open(sys.argv[1])).items()))" "$selected")
  root=datasets; [ "$dataset" = tiktok ] && root=$DATA_ROOT
  timeout "$STAGE_TIMEOUT" $B --model dhmrec --dataset "$dataset" --data-root "$root" --jobs 5 \
    --out "$OUT/ablations" --no-record \
    --grid "ablations=[no_dis],[no_af],[no_pnf],[no_kl],[no_ii]" -- $args &
done
wait
