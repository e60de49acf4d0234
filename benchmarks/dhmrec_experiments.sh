#!/usr/bin/env bash
# Issue-3 experiments: DHMRec vs LightGCN under the same search budget (8 grid points each,
# selected on VALID Recall@20), then DHMRec's five ablations at the selected point.
#   DATA_ROOT=../shared/data DEVICE=cuda bash benchmarks/dhmrec_experiments.sh
# DATASETS (default "tiktok synthetic") and MODELS (default "lightgcn dhmrec") narrow it down.
set -u
DATA_ROOT=${DATA_ROOT:-../shared/data}
DEVICE=${DEVICE:-auto}
OUT=${RUNS:-runs/bench}
DATASETS=${DATASETS:-tiktok synthetic}
MODELS=${MODELS:-lightgcn dhmrec}
B="python benchmarks/benchmark.py --device $DEVICE --out $OUT"
STAGE_TIMEOUT=${STAGE_TIMEOUT:-3000}

root_of() { if [ "$1" = synthetic ]; then echo datasets; else echo "$DATA_ROOT"; fi; }

# Build the processed caches once, before parallel runs read them.
for dataset in $DATASETS; do
  python -c "
from pyg_dhmrec.config import load_config
from pyg_dhmrec.data.dataset import load_dataset
print(load_dataset(load_config('lightgcn', '$dataset', {'data_root': '$(root_of "$dataset")'})))
"
done

for dataset in $DATASETS; do
  for model in $MODELS; do
    case $model in
      lightgcn) grid="--grid num_ui_layers=1,2,3,4 --grid reg_weight=1e-2,1e-4" ;;
      dhmrec) grid="--grid alpha_mm=0.2,0.5,1.0,1.5 --grid gamma_kl=0.1,1.0" ;;
    esac
    timeout "$STAGE_TIMEOUT" $B --model "$model" --dataset "$dataset" \
      --data-root "$(root_of "$dataset")" --jobs 8 $grid &
  done
done
wait

# Ablations at the DHMRec point selected on valid.
for dataset in $DATASETS; do
  selected="$OUT/dhmrec-$dataset/selected.json"
  [ -f "$selected" ] || continue
  args=$(python -c "import json,sys; print(' '.join(f'--{k} {v}' for k, v in json.load(open(sys.argv[1])).items()))" "$selected")
  timeout "$STAGE_TIMEOUT" $B --model dhmrec --dataset "$dataset" --data-root "$(root_of "$dataset")" \
    --jobs 5 --out "$OUT/ablations" --no-record \
    --grid "ablations=[no_dis],[no_af],[no_pnf],[no_kl],[no_ii]" -- $args &
done
wait
