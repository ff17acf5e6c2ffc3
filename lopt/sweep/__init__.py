"""Sweeps and studies: lopt's Optuna study sweeper (:mod:`lopt.sweep.study`), the local launcher
that caps parallel jobs to the machine (:mod:`lopt.sweep.local`) and the summary every multirun
writes (:mod:`lopt.sweep.summary`). Hydra loads the first two through the tiny
``hydra_plugins.lopt_sweeper`` package (``lopt/sweep/plugin/``; see its docstring for why).

Nothing here imports optuna, torch or submitit at import time: Hydra imports the plugin package
at every start, single runs included.
"""
