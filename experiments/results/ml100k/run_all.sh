#!/usr/bin/env bash
# Reproduces experiments/results/ml100k/ under the fair protocol: every method tuned by an Optuna
# study of the same size and epoch budget (selected on validation AUC, early stopping on it), the
# best configuration of each study re-run for 5 seeds in three blocks, then the table, the
# figures and the compact per-run records committed under runs/.
#   bash experiments/results/ml100k/run_all.sh [/path/to/ml-100k/u.data]
# Without an argument the ml100k dataset's own path is used (downloaded there on first use).
# Knobs (environment): TRIALS (trials per study), EPOCHS and PATIENCE (the equal budget), SEEDS,
# RUNS (where the full runs, checkpoints included, land; not committed), PYTHON.
#
# Blocks:
#   paper  — the paper's protocol (Λ of λOpt/SGDA learned on the valid split);
#   refit  — control=refit: λFix, AMF, NeuMF retrained on train ∪ valid for their selected epochs
#            (λOpt and SGDA are unchanged by this switch: the table takes their paper-block runs);
#   inner  — control=inner: λOpt and SGDA learn Λ on a split carved from train (λFix, AMF and
#            NeuMF are unchanged by this switch: the table takes their paper-block runs).
set -euo pipefail
cd "$(dirname "$0")/../../.."
DATA=${1:-}
RUNS=${RUNS:-data/results/ml100k}
OUT=experiments/results/ml100k
PY=${PYTHON:-.venv/bin/python}
TRIALS=${TRIALS:-8}
EPOCHS=${EPOCHS:-50}
PATIENCE=${PATIENCE:-10}
SEEDS=${SEEDS:-0,1,2,3,4}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # parallel jobs share the cores
mkdir -p "$RUNS"

common=(dataset=ml100k logger=csv hydra/launcher=local)
if [[ -n "$DATA" ]]; then common+=(dataset.source.path="$DATA"); fi
budget=(study.n_trials="$TRIALS" budget.max_epochs="$EPOCHS" budget.patience="$PATIENCE")

# 1. One Optuna study per method (same trials, same budget), 2 trials at a time, stored in
#    $RUNS/studies/ml100k_$m/ (a finished study runs no trial again; an interrupted one resumes).
#    λOpt is tuned once, on its headline granularity DUI; D, DU and DI re-use that study's Λ settings.
for m in fix sgda amf neumf dui; do
  tune=$m; [[ $m == dui ]] && tune=lambda_opt
  $PY run.py -m +experiment=ml100k_$m +tune=$tune "${common[@]}" "${budget[@]}" \
    study.dir="$RUNS/studies" study.name=ml100k_$m >> "$RUNS/study_$m.log" 2>&1
done

# 2. The best configuration of every study, re-run for the seeds, in each block.
rerun() {  # rerun BLOCK CONTROL STUDY…
  local block=$1 control=$2; shift 2
  local studies=(); for m in "$@"; do studies+=("$RUNS/studies/ml100k_$m"); done
  $PY experiments/rerun_best.py "${studies[@]}" --seeds "$SEEDS" --out "$RUNS/$block" control="$control" \
    >> "$RUNS/$block.log" 2>&1
  for g in d du di; do
    [[ " $* " == *" dui "* ]] || continue
    $PY experiments/rerun_best.py "$RUNS/studies/ml100k_dui" --seeds "$SEEDS" --out "$RUNS/$block" \
      control="$control" +experiment=ml100k_$g >> "$RUNS/$block.log" 2>&1
  done
}
rerun paper none fix sgda amf neumf dui
rerun refit refit fix amf neumf
rerun inner inner sgda dui

# 3. Compact records (no checkpoints), then the table and the figures from them alone.
$PY experiments/collect_records.py "$RUNS/paper" "$RUNS/refit" "$RUNS/inner" --out "$OUT/runs" --overwrite
$PY experiments/reproduce_table.py "$OUT/runs" --out "$OUT/table.md"
$PY experiments/figures.py "$OUT/runs" --out "$OUT"
