#!/usr/bin/env bash
# Runs (or resumes) the fair Last.fm 2K study of study.yaml beside this script: every method tuned in
# the paper and inner blocks, the selections re-run for every seed in the paper, inner,
# refit-final and refit-trajectory blocks, each chunk ending with its compact records.
#   bash experiments/results/lastfm2k/run_all.sh --plan      # the chunks and the CPU estimate
#   bash experiments/results/lastfm2k/run_all.sh --measure   # time an epoch of every method first
#   bash experiments/results/lastfm2k/run_all.sh --commit    # run; commit each chunk's records
#   bash experiments/results/lastfm2k/run_all.sh --commit --hours 2.5   # suspend after 2.5 h (exit 3); run again to resume
# The epoch budget, seeds and trials are study.yaml's (budget: conf/budget/equal.yaml's keys);
# the data file comes from paths.data_dir (LOPT_DATA_DIR) like every lastfm2k run. PYTHON picks
# the interpreter. Then write the table and figures from runs/ (experiments/reproduce_table.py).
set -euo pipefail
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # parallel jobs share the cores
exec "${PYTHON:-.venv/bin/python}" experiments/study.py experiments/results/lastfm2k/study.yaml "$@"
