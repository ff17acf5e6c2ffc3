"""Re-run the best configuration of finished Optuna studies (``+tune=…``) for several seeds.

    python experiments/rerun_best.py STUDY_DIR [STUDY_DIR …] [--seeds 0,1,2,3,4] [--out DIR]
                                     [--storage URL] [--dry-run] [OVERRIDE …]

STUDY_DIR is a study's folder, ``<study.dir>/<study.name>`` (``studies/…`` by default): its
``study.yaml`` names the study and its storage, and the study is read from that storage with
optuna's API: its best trial's parameters and the command line that made it (kept in the
study). ``--storage`` gives the storage URL instead (one with a password, which study.yaml
leaves out). For each study this launches one multirun::

    python run.py -m <the study's overrides, +tune=X → +budget=equal> <best_params> seed=<seeds> <OVERRIDE …>

so the re-runs keep the study's experiment, data, launcher and equal budget (epochs, early
stopping), with the best hyper-parameters fixed. OVERRIDEs are appended to every study's command,
e.g. ``control=refit`` or ``hydra/launcher=slurm hydra.launcher.partition=gpu``: one command
re-runs a whole block of methods. An override ``+experiment=X`` re-runs the study's best
hyper-parameters under another experiment (e.g. one λOpt study's Λ settings for every
granularity); its runs go to ``DIR/X``. Each study's runs go to ``DIR/<experiment>`` (``--out``, by
default ``<STUDY_DIR>-best``); ``--dry-run`` prints the commands only.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from lopt.sweep.study import best_params, load_stored_study

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Config groups/nodes of a study that a re-run leaves out (the sweeper and its settings).
STUDY_ONLY = ("tune", "study")
#: Hydra overrides of a study that a re-run sets itself.
HYDRA_REPLACED = ("hydra.sweep.dir", "hydra.mode", "hydra.sweeper")


def override_key(override: str) -> str:
    """The key of a Hydra override: ``+tune=fix`` → ``tune``, ``~a.b`` → ``a.b``."""
    return override.split("=", 1)[0].lstrip("+~")


def _under(key: str, roots: Sequence[str]) -> bool:
    return any(key == root or key.startswith(root + ".") or key.startswith(root + "/") for root in roots)


def study_command_line(study) -> tuple[list[str], list[str]]:
    """(task overrides, hydra overrides) of the command that made the study."""
    return list(study.user_attrs.get("overrides") or []), list(study.user_attrs.get("hydra_overrides") or [])


def _label(overrides: Sequence[str], fallback: str) -> str:
    """The sweep folder of a re-run: the last ``experiment`` override's name."""
    for override in reversed(overrides):
        if override_key(override) == "experiment":
            return override.split("=", 1)[1].replace("/", "_")
    return fallback


def rerun_command(
    study_dir: Path, seeds: str, out: Path, extra: Sequence[str] = (), storage: str | None = None
) -> list[str]:
    """The ``run.py -m`` command that re-runs the study's best configuration for ``seeds``."""
    study = load_stored_study(study_dir, storage)
    task, hydra_overrides = study_command_line(study)
    params = best_params(study)
    given = {override_key(o): o for o in extra}  # given again for the re-run: theirs win, in place
    overrides = []
    for override in task:
        key = override_key(override)
        if key == "tune":
            overrides.append("+budget=equal")
        elif key in given:
            # in the study's position: a config added to the defaults list (+experiment=…) must
            # come before +budget=equal, whose epoch budget overrides the experiment's
            overrides.append(given.pop(key))
        elif key in params or key == "seed" or _under(key, STUDY_ONLY):
            continue
        else:
            overrides.append(override)
    replaced = {override_key(o) for o in extra}
    overrides += [f"{key}={value}" for key, value in params.items() if key not in replaced]
    overrides += [
        o for o in hydra_overrides if not _under(override_key(o), HYDRA_REPLACED) and override_key(o) not in replaced
    ]
    label = _label([*task, *extra], study_dir.name)  # an experiment given again (extra) names the folder
    overrides += [f"seed={seeds}", f"hydra.sweep.dir={out / label}", *given.values()]
    return [sys.executable, str(REPO_ROOT / "run.py"), "-m", *overrides]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("studies", nargs="+", help="study sweep folders, then Hydra overrides for every re-run")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (default 0,1,2,3,4)")
    parser.add_argument(
        "--out", type=Path, default=None, help="root of the re-runs' sweep folders (default <STUDY_DIR>-best)"
    )
    parser.add_argument("--storage", default=None, help="the studies' storage URL (default: from study.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_intermixed_args(argv)
    studies = [Path(s) for s in args.studies if "=" not in s]
    extra = [s for s in args.studies if "=" in s]
    if not studies:
        parser.error("give at least one study folder")
    try:
        commands = [
            rerun_command(study, args.seeds, args.out or study.with_name(study.name + "-best"), extra, args.storage)
            for study in studies
        ]
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for command in commands:
        print(shlex.join(command), flush=True)
        if not args.dry_run:
            code = subprocess.run(command, check=False).returncode
            if code != 0:
                print(f"error: the re-run exited with {code}", file=sys.stderr)
                return code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
