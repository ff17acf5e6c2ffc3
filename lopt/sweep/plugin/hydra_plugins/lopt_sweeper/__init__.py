"""lopt's Hydra plugins: the Optuna study sweeper and the capped local launcher.

Why this package exists: Hydra instantiates a sweeper or launcher only if its class lives in the
``hydra_plugins`` namespace package (``Plugins._instantiate`` refuses any other ``_target_``) and
finds it by scanning that namespace. lopt's code lives in ``lopt.sweep``; these two subclasses
only give it a name Hydra accepts. The folder is ``lopt/sweep/plugin/hydra_plugins/lopt_sweeper``
and ``pyproject.toml`` maps it to the top-level ``hydra_plugins.lopt_sweeper`` (``packages.find``
with ``where = [".", "lopt/sweep/plugin"]``), so it is found in a wheel and in an editable
install alike (``pip install -e .``: setuptools' editable finder adds the folder to the
``hydra_plugins`` namespace path, where Hydra's scan sees it).

It replaces Hydra's Optuna sweeper plugin, whose latest release (1.3.0) requires optuna < 3.
"""

from lopt.sweep.local import CappedLocalLauncher
from lopt.sweep.study import StudySweeper


class LoptSweeper(StudySweeper):
    """``hydra/sweeper=lopt``: :class:`lopt.sweep.study.StudySweeper`."""


class LocalLauncher(CappedLocalLauncher):
    """``hydra/launcher=local``: :class:`lopt.sweep.local.CappedLocalLauncher`."""


__all__ = ["LocalLauncher", "LoptSweeper"]
