#!/usr/bin/env bash
# TikTok experiments of issues 4-6, every model at its configs/models/<name>.yaml settings (the
# published ones; no tuning), each row appended to benchmarks/RESULTS.md by benchmark.py.
#   STAGES="baselines siger mrdib" JOBS=2 bash benchmarks/tiktok_experiments.sh
# baselines: LightGCN, LayerGCN, VBPR, FREEDOM, LATTICE, LGMRec and BM3 of DHMRec's Table 1, and MGCN
# (not in that table; DHMRec: dhmrec_experiments.sh);
# siger: SIGER and each ablation with FREEDOM's backbone settings; mrdib: base models + MRdIB
# (the bases alone are baselines rows; DHMRec alone: dhmrec_experiments.sh).
# JOBS runs go at once, each with one thread (OMP_NUM_THREADS=1) so that they do not oversubscribe.
set -u
DATA_ROOT=${DATA_ROOT:-../shared/data}
DEVICE=${DEVICE:-auto}
OUT=${RUNS:-runs/tiktok}
STAGES=${STAGES:-baselines siger mrdib}
BASELINES=${BASELINES:-lightgcn layergcn vbpr freedom lattice mgcn lgmrec bm3}
MRDIB_BASES=${MRDIB_BASES:-vbpr freedom dhmrec}  # any model exposing modalities, e.g. lgmrec
JOBS=${JOBS:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
B="python benchmarks/benchmark.py --dataset tiktok --data-root $DATA_ROOT --device $DEVICE"

# Build the processed cache once, before parallel runs read it.
python -c "
from pyg_dhmrec.config import load_config
from pyg_dhmrec.data.dataset import load_dataset
print(load_dataset(load_config('lightgcn', 'tiktok', {'data_root': '$DATA_ROOT'})))
"

commands=()
for stage in $STAGES; do
  case $stage in
    baselines)
      for model in $BASELINES; do
        commands+=("$B --model $model --out $OUT/baselines --note 'published settings'")
      done ;;
    siger)
      commands+=("$B --model siger --out $OUT/siger --note 'FREEDOM backbone settings'")
      for part in infusion perturbation alignment; do
        commands+=("$B --model siger --out $OUT/siger-no_$part --note 'w/o $part' -- --use_$part false")
      done ;;
    mrdib)
      for model in $MRDIB_BASES; do
        commands+=("$B --model $model --out $OUT/mrdib --note 'base settings + MRdIB' -- --plugin mrdib")
      done ;;
    *) echo "unknown stage '$stage' (baselines, siger, mrdib)" >&2; exit 2 ;;
  esac
done

printf '%s\n' "${commands[@]}" | xargs -d '\n' -P "$JOBS" -I{} bash -c '{}'
