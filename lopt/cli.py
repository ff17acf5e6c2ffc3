"""The ``lopt`` command (the console script of the package; also ``python -m lopt``).

    lopt train [HYDRA ARGS…]          one run, or a sweep with -m: the overrides of python run.py
    lopt recommend RUN_DIR [--k K …]  top-K recommendations of a finished run
    lopt table [ARGS…]                the results table(s) of a folder of finished runs
    lopt figures [ARGS…]              the paper's figures from a folder of finished runs

``lopt train`` is ``python run.py`` for an installed lopt: the same Hydra application over the
configs that ship in the package (:func:`lopt.api.default_config_dir`), named ``run`` as
``run.py`` is (its log is ``run.log``, its SLURM jobs are named ``run``), with Hydra's own flags
(``-m``, ``--cfg job``, ``--help``, ``--info``). The other subcommands hand their arguments to
the ``main(argv) -> int`` of their module, imported only when that subcommand runs, so that
``lopt --help`` answers without loading torch.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from omegaconf import DictConfig

#: Hydra's job name for ``lopt train``: the one ``python run.py`` gets from its file name.
JOB_NAME = "run"

#: subcommand → ("module:function" taking argv and returning an exit status, one-line help).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": (
        "lopt.cli:train_main",
        "one run, or a sweep with -m; Hydra overrides as for python run.py (lopt train --help: the config groups)",
    ),
    "recommend": ("lopt.recommend:main", "top-K recommendations of a finished run (lopt recommend RUN_DIR --k 20)"),
    "table": ("lopt.analysis.table:main", "the results table(s) of a folder of finished runs"),
    "figures": ("lopt.analysis.figures:main", "the paper's figures from a folder of finished runs"),
}

EXAMPLES = """\
examples:
  lopt train                                   MF-λOpt-DUI on the built-in synthetic data
  lopt train +experiment=ml100k_dui seed=1     one cell of the paper's table
  lopt train -m +experiment=ml100k_fix         the paper's λ grid for MF-λFix (a Hydra multirun)
  lopt recommend outputs/DATE/TIME --k 20      recommendations.parquet of that run
Each command's own --help describes its arguments."""


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [
        "usage: lopt <command> [ARGS…]",
        "",
        "λOpt (KDD 2019) and its baselines: train, recommend and report.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {text}" for name, (_, text) in SUBCOMMANDS.items()),
        "",
        "options:",
        "  -h, --help   this message",
        "  --version    lopt's version",
        "",
        EXAMPLES,
    ]
    return "\n".join(lines)


def run_job(cfg: DictConfig) -> float | None:
    """Hydra's task function of ``lopt train`` (module level: the SLURM launcher pickles it)."""
    from lopt.pipeline import run  # torch and Lightning load here, after Hydra parsed the command line

    metrics = run(cfg)
    return metrics["valid"].get(cfg.eval.monitor)  # the value a sweeper optimizes


def train_main(argv: Sequence[str]) -> int:
    """``lopt train ARGS``: Hydra's command line over the packaged configs, as ``python run.py ARGS``."""
    import hydra

    from lopt.api import _config_folder

    with _argv(["lopt train"]):  # a malformed line is reported as "lopt train: error: …"
        args = _with_job_name(list(argv))
    config_path = _config_folder(None, "config")
    app = hydra.main(version_base="1.3", config_path=str(config_path), config_name="config")(run_job)
    with _argv(["lopt train", *args]):  # hydra.main reads its command line from sys.argv
        app()
    return 0


def _with_job_name(args: list[str]) -> list[str]:
    """``args`` with the override ``hydra.job.name=run`` added, unless they set the name already.

    Hydra's command line takes its overrides as one run of positional words among its flags
    (``--cfg job``, ``--info [WHAT]``, ...): the override joins that run, right after the
    user's last override, or leads the line when there is none."""
    from hydra._internal.utils import get_args_parser  # the parser hydra.main parses sys.argv with

    parsed, _ = get_args_parser().parse_known_args(args)
    overrides = list(parsed.overrides or [])
    if any(o.lstrip("+~").startswith("hydra.job.name=") for o in overrides):
        return args
    name = f"hydra.job.name={JOB_NAME}"
    n = len(overrides)
    for start in range(len(args) - n + 1 if n else 0):
        if args[start : start + n] == overrides:
            return [*args[: start + n], name, *args[start + n :]]
    return [name, *args]


@contextmanager
def _argv(argv: list[str]) -> Iterator[None]:
    """``sys.argv`` set to ``argv`` for the duration (argparse also takes its ``prog`` from argv[0])."""
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


def _handler(name: str) -> Callable[[list[str]], int | None]:
    target = SUBCOMMANDS[name][0]
    module, _, function = target.partition(":")
    try:
        return getattr(importlib.import_module(module), function)
    except ImportError as err:
        raise SystemExit(f"lopt {name}: cannot import {module} ({err}); is lopt installed completely?") from err


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``lopt <command> ARGS`` (``argv`` defaults to the command line); the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(usage(), file=sys.stderr)
        return 2
    name, rest = args[0], args[1:]
    if name in ("-h", "--help"):
        print(usage())
        return 0
    if name == "--version":
        from importlib import metadata

        print(f"lopt {metadata.version('lopt')}")
        return 0
    if name not in SUBCOMMANDS:
        print(f"lopt: unknown command {name!r}; choose one of {', '.join(SUBCOMMANDS)} (lopt --help)", file=sys.stderr)
        return 2
    handler = _handler(name)
    if name == "train":
        return int(handler(rest) or 0)
    with _argv([f"lopt {name}", *rest]):  # their usage lines then read "lopt recommend …"
        return int(handler(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
