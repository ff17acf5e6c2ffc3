#!/usr/bin/env bash
# The wheel runs anywhere: build lopt's wheel, install it into a fresh venv outside the repository
# (torch first, then the wheel, both from the lock .ci/constraints.txt), and from a folder outside
# the repository run `lopt train` on tiny synthetic data, `lopt recommend` on that run, and the
# Python API (lopt.api.train).
#
#   .ci/wheel_check.sh [WORK_DIR]     WORK_DIR: where the wheel, the venv and the runs go
#                                     (default: a temporary folder, removed at exit)
#
# Environment: PYTHON, the interpreter the venv is made from (default python3.11, else python3);
# TORCH_INDEX, a package index for torch as in the Makefile (e.g. the PyTorch CPU index).
# tests/test_packaging.py runs this script (so `make test` and CI run it).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
LOCK="$REPO/.ci/constraints.txt"
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
# Nothing from the checkout may stand in for the installed package.
unset PYTHONPATH
export PIP_DISABLE_PIP_VERSION_CHECK=1 WANDB_MODE=disabled

if [[ -n "${1:-}" ]]; then
    WORK="$(mkdir -p "$1" && cd "$1" && pwd)"
else
    WORK="$(mktemp -d -t lopt-wheel-XXXXXX)"
    trap 'rm -rf "$WORK"' EXIT
fi
case "$WORK/" in
    "$REPO"/*) echo "[wheel_check] WORK_DIR $WORK is inside the repository $REPO: pick a folder outside it" >&2; exit 2 ;;
esac

step() { printf '[wheel_check] %s\n' "$*" >&2; }
fail() { printf '[wheel_check] FAILED: %s\n' "$*" >&2; exit 1; }

step "building the wheel of $REPO"
rm -rf "$WORK/dist"
"$PY" -m pip wheel --no-deps --quiet --wheel-dir "$WORK/dist" "$REPO"
WHEEL=("$WORK"/dist/lopt-*.whl)
[[ -f "${WHEEL[0]}" ]] || fail "no lopt-*.whl in $WORK/dist"

step "fresh venv $WORK/venv ($("$PY" --version)); torch, then the wheel, from $LOCK"
rm -rf "$WORK/venv"
"$PY" -m venv "$WORK/venv"
BIN="$WORK/venv/bin"
"$BIN/python" -m pip install --quiet ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} -c "$LOCK" torch
"$BIN/python" -m pip install --quiet -c "$LOCK" "${WHEEL[0]}"

JOB="$WORK/job"
rm -rf "$JOB"
mkdir -p "$JOB"
cd "$JOB"
export LOPT_DATA_DIR="$JOB/data"
TINY=(dataset=synthetic dataset.source.n_users=120 dataset.source.n_items=120 dataset.source.n_interactions=3000
    model.dim=8 data.batch_size=256 data.valid_batch_size=256 logger=none)

step "the installed package and its configs"
"$BIN/python" - "$REPO" "$WORK/venv" <<'EOF'
import sys
from pathlib import Path

import lopt
from lopt.api import default_config_dir

repo, venv = Path(sys.argv[1]), Path(sys.argv[2]).resolve()
package = Path(lopt.__file__).resolve().parent
assert package.is_relative_to(venv), f"lopt imported from {package}, not from the venv {venv}"
conf = default_config_dir()
assert conf == package / "conf" and (conf / "config.yaml").is_file(), f"configs at {conf}, not inside {package}"
shipped = sorted(p.relative_to(conf).as_posix() for p in conf.rglob("*.yaml"))
source = sorted(p.relative_to(repo / "conf").as_posix() for p in (repo / "conf").rglob("*.yaml"))
assert shipped == source, f"the wheel's lopt/conf differs from conf/: {sorted(set(shipped) ^ set(source))}"
print(f"lopt {lopt.__version__} from {package}; {len(shipped)} configs in {conf}")
EOF

step "lopt --help"
"$BIN/lopt" --help >help.txt
for command in train recommend table figures; do
    grep -q "^  $command " help.txt || fail "lopt --help does not list '$command'"
done

step "lopt train (tiny synthetic data, 2 epochs)"
"$BIN/lopt" train "${TINY[@]}" trainer.max_epochs=2 hydra.run.dir=run >train.out 2>&1 \
    || { tail -n 40 train.out >&2; fail "lopt train exited non-zero"; }
for file in metrics.json run.log .hydra/config.yaml checkpoints/best.ckpt; do
    [[ -s "run/$file" ]] || fail "lopt train left no run/$file"
done
grep -Eq "^ *- path: $WORK/venv/.*/site-packages/lopt/conf$" run/.hydra/hydra.yaml \
    || fail "the run was not composed from the installed package's configs (run/.hydra/hydra.yaml)"

step "lopt recommend run --k 5"
"$BIN/lopt" recommend run --k 5 >recommend.out 2>&1 || { tail -n 40 recommend.out >&2; fail "lopt recommend exited non-zero"; }
"$BIN/python" - <<'EOF'
import polars as pl

recs = pl.read_parquet("run/recommendations.parquet")
per_user = recs.group_by("raw_user_id").len()["len"]
assert recs.height > 0 and per_user.max() == 5, f"expected 5 recommendations per user, got {per_user.max()}"
print(f"{recs.height} recommendations for {per_user.len()} users")
EOF

step "the Python API: lopt.api.train (1 epoch)"
"$BIN/python" - "${TINY[@]}" <<'EOF' >api.out 2>&1 || { tail -n 40 api.out >&2; fail "lopt.api.train failed"; }
import sys
from pathlib import Path

from lopt.api import train

metrics = train([*sys.argv[1:], "trainer.max_epochs=1", "hydra.run.dir=api_run"], configure_logging=False)
assert Path("api_run/metrics.json").is_file() and 0.0 <= metrics["test"]["auc"] <= 1.0, metrics
EOF

step "passed: the wheel builds, installs outside the repository, trains, recommends and runs the API"
