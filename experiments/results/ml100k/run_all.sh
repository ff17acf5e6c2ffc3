#!/usr/bin/env bash
# Reproduces experiments/results/ml100k/: every ml-100k cell of the paper's table, 3 seeds, then
# the table and the figures. Runs land in $RUNS (not committed: checkpoints are large).
#   bash experiments/results/ml100k/run_all.sh [/path/to/ml-100k/u.data]
# Without an argument the ml100k dataset's own path is used (downloaded there on first use).
set -euo pipefail
cd "$(dirname "$0")/../../.."
DATA=${1:-}
RUNS=${RUNS:-data/results/ml100k}
OUT=experiments/results/ml100k
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # two sweeps share the 2 cores
common=(dataset=ml100k logger=csv seed=0,1,2)
if [[ -n "$DATA" ]]; then common+=(dataset.source.path="$DATA"); fi

# λFix: the paper's 8-value λ grid (the experiment's sweeper params) × 3 seeds.
$PY run.py -m +experiment=ml100k_fix "${common[@]}" hydra.sweep.dir="$RUNS/fix" > "$RUNS.fix.log" 2>&1 &
# λOpt-D/-DU/-DI/-DUI × 3 seeds.
$PY run.py -m +experiment=ml100k_d,ml100k_du,ml100k_di,ml100k_dui "${common[@]}" \
    hydra.sweep.dir="$RUNS/lambda_opt" > "$RUNS.lambda_opt.log" 2>&1 &
wait
# Baselines (SGDA, AMF, NeuMF) × 3 seeds.
$PY run.py -m +experiment=ml100k_sgda,ml100k_amf,ml100k_neumf "${common[@]}" \
    hydra.sweep.dir="$RUNS/baselines" > "$RUNS.baselines.log" 2>&1

$PY experiments/reproduce_table.py "$RUNS" --out "$OUT/table.md"
$PY experiments/figures.py "$RUNS" --out "$OUT"
