"""The ``lopt`` command (lopt/cli.py): its help, its dispatch to each subcommand's ``main(argv)``,
``lopt train`` as the Hydra application of ``python run.py`` over the packaged configs, and
where lopt finds its configs (lopt.api.default_config_dir)."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from lopt import api, cli
from tests.helpers.cli import REPO_ROOT, TINY_OVERRIDES, read_metrics, run_cli


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


def test_help_lists_every_subcommand(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "recommend", "table", "figures"):
        assert f"\n  {name} " in out, f"lopt --help does not list {name}:\n{out}"


def test_no_command_or_an_unknown_one_is_a_usage_error(capsys):
    assert cli.main([]) == 2
    assert "usage: lopt <command>" in capsys.readouterr().err
    assert cli.main(["trian"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'trian'" in err and "train, recommend, table, figures" in err


def test_version(capsys):
    from lopt import __version__

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"lopt {__version__}"


@pytest.mark.parametrize(
    ("command", "module"),
    [("table", "lopt.analysis.table"), ("figures", "lopt.analysis.figures"), ("recommend", "lopt.recommend")],
)
def test_subcommands_forward_their_arguments(monkeypatch, command, module):
    """Each tool gets the arguments after its name and its status is lopt's; its argparse reads
    "lopt <command>" as its program name; sys.argv is restored afterwards."""
    seen = {}

    def stand_in(argv):
        seen["argv"], seen["prog"] = list(argv), sys.argv[0]
        return 3

    monkeypatch.setitem(sys.modules, module, types.SimpleNamespace(main=stand_in))
    argv_before = list(sys.argv)
    assert cli.main([command, "runs/", "--format", "svg", "-m", "x=1"]) == 3
    assert seen == {"argv": ["runs/", "--format", "svg", "-m", "x=1"], "prog": f"lopt {command}"}
    assert sys.argv == argv_before


def test_a_tool_returning_none_exits_zero(monkeypatch):
    monkeypatch.setitem(sys.modules, "lopt.analysis.table", types.SimpleNamespace(main=lambda argv: None))
    assert cli.main(["table"]) == 0


def test_a_missing_tool_says_which_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "lopt.analysis.figures", None)  # import raises ImportError
    with pytest.raises(SystemExit, match=r"lopt figures: cannot import lopt\.analysis\.figures"):
        cli.main(["figures"])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], ["hydra.job.name=run"]),
        (["seed=1"], ["seed=1", "hydra.job.name=run"]),
        (["-m", "seed=1,2", "model.dim=8"], ["-m", "seed=1,2", "model.dim=8", "hydra.job.name=run"]),
        (["--cfg", "job", "seed=1", "--resolve"], ["--cfg", "job", "seed=1", "hydra.job.name=run", "--resolve"]),
        (["--info"], ["hydra.job.name=run", "--info"]),
        (["seed=1", "hydra.job.name=mine"], ["seed=1", "hydra.job.name=mine"]),
    ],
)
def test_train_names_the_job_run(args, expected):
    """The override joins the user's overrides where Hydra's parser accepts it, whatever flags
    surround them; a name the user sets wins."""
    assert cli._with_job_name(args) == expected


def test_train_is_run_py_over_the_packaged_configs(capsys, tmp_path, monkeypatch):
    """`lopt train --cfg hydra …` (no training): the job is named run, the overrides are the
    task's, and the configs come from lopt.api.default_config_dir()."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--cfg", "hydra", "seed=3", "model.dim=8"]) == 0
    out = capsys.readouterr().out
    assert "\n    name: run\n" in out
    assert "    task:\n    - seed=3\n    - model.dim=8\n" in out
    assert f"- path: {api.default_config_dir()}\n      schema: file\n      provider: main" in out


@pytest.mark.slow
def test_train_reports_a_bad_override_like_run_py(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "lopt", "train", "dataset=nonexistent"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**_env(tmp_path)},
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert "Could not find 'dataset/nonexistent'" in proc.stderr


def _env(tmp_path: Path) -> dict[str, str]:
    import os

    env = {**os.environ, "WANDB_MODE": "disabled", "LOPT_DATA_DIR": str(tmp_path / "data")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_config_dir_of_a_checkout_and_of_a_wheel(tmp_path, monkeypatch):
    """A source checkout reads <checkout>/conf; an installed package its own lopt/conf."""
    assert api.default_config_dir() == REPO_ROOT / "conf"
    packaged = tmp_path / "site-packages" / "lopt"
    (packaged / "conf").mkdir(parents=True)
    (packaged / "conf" / "config.yaml").write_text("seed: 0\n")
    monkeypatch.setattr(api.importlib.resources, "files", lambda name: packaged)
    assert api.default_config_dir() == packaged / "conf"


def test_missing_configs_say_where_they_were_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no config\.yaml in .*the config_dir= given.*lopt/conf inside"):
        api.compose_run_config([], config_dir=tmp_path)


@pytest.mark.slow
def test_train_multirun_matches_run_py(tmp_path):
    """`lopt train -m` sweeps as `python run.py -m` does (one job folder per value, each with its
    run.log), and a job's metrics equal those of run.py with the same overrides."""
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lopt",
            "train",
            "-m",
            *TINY_OVERRIDES,
            "seed=0,1",
            f"hydra.sweep.dir={sweep}",
            "hydra.sweep.subdir=${hydra.job.num}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(tmp_path),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, f"lopt train -m exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    for job in jobs:
        assert (job / "run.log").stat().st_size > 0 and (job / "metrics.json").is_file()
    run_cli([*TINY_OVERRIDES, "seed=1", f"hydra.run.dir={tmp_path / 'run_py'}"], cwd=tmp_path)
    lopt_metrics, run_py_metrics = read_metrics(sweep / "1"), read_metrics(tmp_path / "run_py")
    assert lopt_metrics["test"] == run_py_metrics["test"] and lopt_metrics["valid"] == run_py_metrics["valid"]
