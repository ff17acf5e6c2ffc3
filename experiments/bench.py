"""Performance benchmark: λOpt at the cost of λFix, dense and row-sparse Θ optimizers, fast data and evaluation.

    python experiments/bench.py --shape ml10m --out bench.json   # the paper's size (minutes)
    python experiments/bench.py --shape ml1m --out bench.json    # a quick run
    python experiments/bench.py --shape tiny --out bench.json    # seconds (the test suite's)
    python experiments/bench.py --shape ml10m --device cuda      # where a GPU exists
    python experiments/bench.py --shape large --out bench.json   # 1M users × 250k items, 20M interactions:
                                                                 # step keys only (no unfused rows,
                                                                 # epochs, evaluation)
    python experiments/bench.py --shape ml100k --data u.data --threads 1   # small data (minutes)
    python experiments/bench.py --study --data u.data --study-before OLD   # the studies (hours)
    python experiments/bench.py --rss --shape ml10m                        # one run's memory
    python experiments/bench.py --gather --threads 1                       # fused loss vs autograd (seconds)
    python experiments/bench.py --lookahead --data u.data --threads 1      # Λ-step: rows vs whole tables
    python experiments/bench.py --compare BEFORE.json AFTER.json            # two records as a markdown table

Each mode adds its keys to ``--out`` (an existing file keeps its other keys).

``--shape ml100k`` (:func:`run_ml100k`; the real ml-100k file, ``--data``), in one process at
1 thread: ``ml100k_bare_step_seconds``, the floor — a λFix step in plain eager PyTorch (gather,
BPR, L2, backward, fused Adam; :func:`bare_fix_steps`) on lopt's own batches — and
``ml100k_bare_eval_seconds`` (scores of every valid user × item and a top-100); lopt's
``ml100k_{fix,dui}_step_seconds`` under the Trainer built as ``run.py`` builds it;
``ml100k_epoch_seconds_*`` (epochs without validation) and ``ml100k_epoch_eval_seconds_*``
(with it, checkpoints included: one ``on_train_epoch_start`` to the next), medians after the
first epoch; ``ml100k_eval_seconds`` (``trainer.validate``); the ratios of the issue's targets;
and ``startup_seconds``: ``python run.py`` (synthetic data) from launch to its first training
step (:class:`FirstStepStamp`), the median of 2 fresh processes.

``--study`` (:func:`run_study`): ``ml100k_study_seconds``, the wall time of a λFix and a
λOpt-DUI study of 20 trials each, run as users run them (``python run.py -m``, the local
launcher, 2 jobs at a time, the equal budget: 80 epochs at most with early stopping) over the
fixed configuration lists of :data:`STUDY_SWEEPS`, so that no sampler confounds the timing;
``--study-before DIR`` times the same in another checkout (``ml100k_study_seconds_before``);
``--study-shared`` times this checkout's studies once more with the trials sharing processes
(``ml100k_study_seconds_shared``: two ``run.py -m`` processes of Hydra's basic launcher, each
running its half of the list one trial after another). A pair longer than one sitting is timed in
pieces: ``--study-methods`` (one study) and ``--study-part K/N`` (the K-th of N contiguous parts of
each list, in whole batches), each piece's pair back to back; ``--combine-studies`` sums them.

``--startup-imports DIR`` (:func:`run_startup_imports`): the modules outside lopt that a run of
this checkout, or of the baseline checkout DIR, alone has imported by its first training step: a
start-up that cannot grow by what it imports, measured without timing noise.

``--rss`` (:func:`run_rss`): ``peak_rss_mb_ml10m_dui_run``, the peak resident memory of one
``ml10m_dui`` run (``--rss-epochs``, 3) on the shape's synthetic file, as the only child of a
small wrapper that reads its children's ``ru_maxrss``.

``--gather`` (:func:`run_gather`): the forward and backward of the BPR loss of one batch
(1,024 triples, d = 64, uniform ids) by ``MatrixFactorization``'s forward under autograd (its
row-sparse gather: unique rows, a sparse gradient densified into the reused buffer) and by the
fused training loss (``MatrixFactorization.bpr_loss``: its backward adds the triples' rows into
the reused buffer), for square tables of growing size; CPU time of this thread (so another
process on the machine does not inflate it), medians over interleaved rounds.
``gather_rows_per_gather`` lists the tables' rows per user gather,
``gather_ratio_fused_over_sparse`` the ratios.

``--lookahead`` (:func:`run_lookahead`): one λOpt-DUI Λ-step (the look-ahead and its backward,
the Θ clip check, the Λ clip, dense LambdaAdam with amsgrad; d = 128, Adam Θ, the kernels
compiled, 1,024 train and 1,024 validation triples, uniform ids) by the row kernels and over
whole tables (:mod:`lopt.lookahead.dense`, forced on at every size; ``--compile-lookahead off``:
the eager kernels), for square tables of
|U| + |I| = k × (|B| + |V|) rows; thread CPU time, medians over interleaved rounds.
``lookahead_rows_per_triple`` lists k, ``lookahead_ratio_dense_over_rows`` the ratios: where
they cross 1 is what :func:`lopt.lookahead.dense.max_rows_per_triple` should be. With ``--data``
(ml-100k's u.data) also ``lookahead_ml100k_*``: ``ml100k_dui``'s own Λ-step on its real batches,
the two routes alternating step by step in one process.

``--shape ml10m`` and the other synthetic shapes:

Everything is measured in ONE process (so the ratios compare like with like):

1. a synthetic dataset of the shape (``lopt.data.synthetic``; ML-10M: 69,878 users, 10,677
   items, 10,000,054 interactions) is written once as a ``user::item::rating::timestamp`` file
   under ``--cache-dir`` (in a child process, so its memory is not the benchmark's) and reused;
   the large shape is drawn by popularity alone (:func:`popularity_interactions`, 19.1 M distinct
   pairs), since the planted-taste generator's cost grows with n_users × n_items;
2. ``prep_seconds``: ``read_movielens_dat`` + ``prepare_split`` (dedupe, filter, re-index,
   split; no split cache), with the ml10m dataset config's preprocessing;
3. ``sample_seconds_per_epoch``: one epoch of training triples (permutation + negatives,
   ``TripleEpochs.epoch_triples``), median over a few epochs;
4. the iteration times, from the experiment configs ``ml10m_fix`` / ``ml10m_d`` /
   ``ml10m_dui`` (d = 128, batch 10,240, Adam Θ with clip 100, LambdaSGD lr 1e-3 with Λ clip
   100, the look-ahead kernels compiled as the λOpt experiments set it — ``--compile-lookahead``
   forces them on or off) and ``ml10m_dui`` with ``lambda_optimizer=adam`` (dense LambdaAdam,
   amsgrad): the
   module and Trainer are built by ``lopt.pipeline.build_module`` / ``build_trainer`` exactly as
   ``run.py`` builds them (CSV logger, log every 50 steps, checkpoint callback), and a
   ``Trainer(max_steps=…)`` runs the real ``training_step``. A callback stamps
   ``on_train_batch_start``; one iteration is the time from one stamp to the next, i.e. all a
   user pays per step (data, hooks, logging, training_step). The median after warm-up is
   reported (compiling happens in the warm-up); the methods are run in interleaved rounds
   (``SCHEDULES``) so that load drifts hit them alike;
   Each method also runs with the dense optimizer's reference update (``*_unfused``:
   ``optimizer.fused=false``) and with the row-sparse lazy Adam (``*_sparse``:
   ``optimizer=sparse_adam``); ``floor_adam_seconds`` is one fused dense Adam update over a
   (|U|+|I|)×d parameter set alone, timed in the same rounds (the memory-bandwidth floor of a
   dense step; ``ratio_fix_over_floor``);
5. ``loop_overhead_fraction``: the λFix iteration under the Trainer against the same step
   without Lightning (the step functions of ``lopt.lookahead.steps`` that the modules call, driven
   by a plain loop, :func:`_bare_step`), ``median(trainer) / median(bare) − 1``;
5b. ``epoch_seconds_{fix,dui,fix_sparse,dui_sparse}``: one full training epoch under the Trainer
   (no validation), and ``samples_per_second_{fix,dui}_sparse``: training triples per second of
   those epochs;
6. ``eval_seconds``: ``trainer.test`` of the λFix module, the full ranking of every test user
   against all items (config ``data.eval_batch_users`` users per block), beyond-accuracy
   statistics included; ``eval_standard_seconds``: the same under ``protocol=standard``
   (Recall/Precision/NDCG/HR/MAP@{10,20,50}, MRR, AUC);
7. ``peak_rss_mb``: the peak resident memory of this process (``ru_maxrss``), and
   ``peak_rss_mb_by_phase``: that peak as it stood after each phase (prep, sampling, iterations,
   epochs, evaluation), which shows the phase that set it.

Prints a table and writes ``--out`` atomically (JSON). Timings on a shared machine are noisy:
``load_avg`` records ``os.getloadavg()`` before and after the measurement.
"""

from __future__ import annotations

import argparse
import atexit
import copy
import ctypes
import functools
import gc
import json
import logging
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"

#: (n_users, n_items, n_interactions) of each shape; ml10m/ml1m are the MovieLens sizes.
SHAPES: dict[str, tuple[int, int, int]] = {
    "ml10m": (69_878, 10_677, 10_000_054),
    "ml1m": (6_040, 3_706, 1_000_209),
    "tiny": (400, 250, 16_000),
    "large": (1_000_000, 250_000, 20_000_000),
}
#: Shapes generated by popularity alone (:func:`popularity_interactions`), not by the planted-taste
#: generator, whose cost grows with n_users × n_items.
POPULARITY_ONLY_SHAPES = ("large",)
#: Shapes timed on iterations only (no unfused rows, no epochs, no evaluation).
STEP_ONLY_SHAPES = ("large",)
#: Per shape: (warm-up iterations, timed iterations per round, rounds, sampling epochs).
SCHEDULES: dict[str, tuple[int, int, int, int]] = {
    "ml10m": (5, 20, 3, 3),
    "ml1m": (5, 30, 2, 3),
    "tiny": (2, 5, 1, 2),
    "large": (3, 8, 2, 1),
}
#: Batch size per shape (the paper's ML-10M batch for the MovieLens shapes).
BATCH: dict[str, int] = {"ml10m": 10_240, "ml1m": 10_240, "tiny": 1_024, "large": 10_240}
GENERATOR = {"rank": 8, "user_alpha": 0.6, "item_alpha": 0.9, "noise": 0.3, "seed": 0}

#: key in bench.json → (experiment config, extra overrides)
METHODS: dict[str, tuple[str, list[str]]] = {
    "fix": ("ml10m_fix", []),
    "opt_d": ("ml10m_d", ["model.lambda_grad_clip_norm=100.0"]),
    "opt_dui": ("ml10m_dui", ["model.lambda_grad_clip_norm=100.0"]),
    "opt_dui_adam": ("ml10m_dui", ["model.lambda_grad_clip_norm=100.0"]),
    # the dense Θ optimizers' reference (unfused, for-loop) update
    "fix_unfused": ("ml10m_fix", ["optimizer.fused=false"]),
    "opt_d_unfused": ("ml10m_d", ["model.lambda_grad_clip_norm=100.0", "optimizer.fused=false"]),
    "opt_dui_unfused": ("ml10m_dui", ["model.lambda_grad_clip_norm=100.0", "optimizer.fused=false"]),
    "opt_dui_adam_unfused": ("ml10m_dui", ["model.lambda_grad_clip_norm=100.0", "optimizer.fused=false"]),
    # the row-sparse lazy Adam Θ optimizer (optimizer=sparse_adam)
    "fix_sparse": ("ml10m_fix", ["optimizer=sparse_adam"]),
    "opt_d_sparse": ("ml10m_d", ["model.lambda_grad_clip_norm=100.0", "optimizer=sparse_adam"]),
    "opt_dui_sparse": ("ml10m_dui", ["model.lambda_grad_clip_norm=100.0", "optimizer=sparse_adam"]),
    "opt_dui_adam_sparse": ("ml10m_dui", ["model.lambda_grad_clip_norm=100.0", "optimizer=sparse_adam"]),
}
#: Keys timed over one full epoch (``epoch_seconds_<suffix>``), not at STEP_ONLY_SHAPES.
EPOCH_KEYS: dict[str, str] = {
    "fix": "fix",
    "opt_dui": "dui",
    "fix_sparse": "fix_sparse",
    "opt_dui_sparse": "dui_sparse",
}
#: The Λ optimizer of each λOpt key, set explicitly (whatever the experiment config picks): the
#: paper's ML-10M LambdaSGD lr 1e-3, and dense LambdaAdam (amsgrad, the paper's Amazon setting).
_LAMBDA_SGD = {"_target_": "lopt.optim.lambda_optimizers.LambdaSGD", "_partial_": True, "lr": 1e-3}
_LAMBDA_ADAM = {
    "_target_": "lopt.optim.lambda_optimizers.LambdaAdam",
    "_partial_": True,
    "lr": 1e-2,
    "betas": [0.9, 0.999],
    "eps": 1e-8,
    "amsgrad": True,
}
LAMBDA_OPTIMIZERS: dict[str, dict[str, Any]] = {
    f"{base}{suffix}": lam
    for base, lam in (("opt_d", _LAMBDA_SGD), ("opt_dui", _LAMBDA_SGD), ("opt_dui_adam", _LAMBDA_ADAM))
    for suffix in ("", "_unfused", "_sparse")
}


def method_config(key: str, overrides: list[str], compile_lookahead: bool | None = None) -> Any:
    """The composed config of a bench key, its Λ optimizer pinned (see LAMBDA_OPTIMIZERS);
    ``compile_lookahead`` (λOpt keys) replaces the experiment's ``model.compile_lookahead``."""
    from omegaconf import OmegaConf, open_dict

    experiment, extra = METHODS[key]
    cfg = _compose(experiment, [*extra, *overrides])
    with open_dict(cfg):
        if key in LAMBDA_OPTIMIZERS:
            cfg.lambda_optimizer = OmegaConf.create(LAMBDA_OPTIMIZERS[key])
        if compile_lookahead is not None and "compile_lookahead" in cfg.model:
            cfg.model.compile_lookahead = compile_lookahead
    return cfg


REQUIRED_KEYS = (
    "prep_seconds",
    "sample_seconds_per_epoch",
    "fix_step_seconds",
    "opt_d_step_seconds",
    "opt_dui_step_seconds",
    "opt_dui_adam_step_seconds",
    "ratio_dui_over_fix",
    "ratio_d_over_fix",
    "ratio_dui_adam_over_fix",
    "fix_sparse_step_seconds",
    "opt_d_sparse_step_seconds",
    "opt_dui_sparse_step_seconds",
    "opt_dui_adam_sparse_step_seconds",
    "ratio_fix_sparse_over_fix",
    "ratio_dui_sparse_over_fix_sparse",
    "epoch_seconds_fix",
    "epoch_seconds_dui",
    "epoch_seconds_fix_sparse",
    "epoch_seconds_dui_sparse",
    "floor_adam_seconds",
    "ratio_fix_over_floor",
    "samples_per_second_fix_sparse",
    "samples_per_second_dui_sparse",
    "eval_seconds",
    "eval_standard_seconds",
    "peak_rss_mb",
    "loop_overhead_fraction",
    "machine",
    "torch_threads",
    "shape",
    "load_avg",
)


# --------------------------------------------------------------------------- data file
def data_file(cache_dir: Path, shape: str) -> Path:
    n_users, n_items, n = SHAPES[shape]
    return cache_dir / f"synthetic-{shape}-{n_users}x{n_items}-{n}-v1" / "ratings.dat"


def generate_file(path: Path, shape: str) -> None:
    """Write the shape's synthetic interactions as ``user::item::rating::timestamp`` (atomic)."""
    import numpy as np
    import polars as pl

    from lopt.data.synthetic import generate_interactions
    from lopt.io import atomic_write

    n_users, n_items, n = SHAPES[shape]
    if shape in POPULARITY_ONLY_SHAPES:
        frame = popularity_interactions(n_users, n_items, n, GENERATOR["user_alpha"], GENERATOR["item_alpha"])
    else:
        frame = generate_interactions(n_users, n_items, n, **GENERATOR)
    # Shuffle the rows (a real ratings file is not grouped by time) and add half-star ratings.
    rng = np.random.default_rng(GENERATOR["seed"])
    frame = frame[rng.permutation(frame.height)]
    ratings = pl.Series("rating", (rng.integers(1, 11, frame.height) / 2).astype(np.float64))
    lines = frame.with_columns(ratings).select(
        pl.concat_str(
            [pl.col("user"), pl.col("item"), pl.col("rating").cast(pl.String), pl.col("timestamp")], separator="::"
        ).alias("line")
    )
    atomic_write(path, lambda tmp: lines.write_csv(tmp, include_header=False, quote_style="never"))


def popularity_interactions(
    n_users: int, n_items: int, n: int, user_alpha: float, item_alpha: float, seed: int = 0
) -> Any:
    """About ``n`` distinct (user, item, timestamp) rows in O(n log n_items): power-law user
    activity (at least 3 each) and items drawn by power-law popularity, duplicate pairs dropped
    (so slightly fewer than ``n`` rows), random timestamps. No planted taste: the planted-taste
    generator scores every (user, item) cell, hours at a million users × 250 k items."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    weights = np.power(1.0 + rng.permutation(n_users), -user_alpha)
    counts = 3 + rng.multinomial(n - 3 * n_users, weights / weights.sum())
    users = np.repeat(np.arange(n_users, dtype=np.int64), counts)
    popularity = np.cumsum(np.power(1.0 + rng.permutation(n_items), -item_alpha))
    items = np.searchsorted(popularity, rng.random(users.size) * popularity[-1]).astype(np.int64)
    timestamps = 946_684_800 + rng.integers(0, 10 * 365 * 86_400, users.size)
    frame = pl.DataFrame({"user": users, "item": np.minimum(items, n_items - 1), "timestamp": timestamps})
    return frame.unique(subset=["user", "item"], keep="first", maintain_order=True)


def ensure_file(cache_dir: Path, shape: str) -> Path:
    """The cached ``::`` file of the shape, generated once in a child process."""
    path = data_file(cache_dir, shape)
    if not path.is_file():
        started = time.perf_counter()
        print(f"generating {path} (once) …", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, __file__, "--generate", str(path), "--shape", shape], check=True)
        print(f"generated in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return path


# --------------------------------------------------------------------------- helpers
def _release_memory() -> None:
    """Free what the last method left (cycles, then glibc's free heap pages back to the system),
    so that ``peak_rss_mb`` is the peak of the largest method, not the sum of every method's
    heap fragments in this one process."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _machine(device: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        mem = f", {pages * size / 2**30:.0f} GiB RAM"
    except (ValueError, OSError):
        pass
    text = f"{cpu}, {os.cpu_count()} logical CPUs{mem}, {platform.system()} {platform.release()}"
    text += f", Python {platform.python_version()}, torch {torch.__version__}"
    if device == "cuda" and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def code_commit(checkout: Path) -> str:
    """The commit of the lopt checkout ``checkout`` (``-dirty`` when it has changes; ``unknown``
    outside git): the code the timed runs ran."""
    from lopt.run.provenance import commit_label

    return commit_label(checkout)


def _compose(experiment: str, overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[f"+experiment={experiment}", *overrides])


def _scratch_run_overrides(
    data: Path, cache_dir: Path, prefix: str, batch: int | None = None
) -> tuple[Path, list[str]]:
    """(a scratch folder removed at exit, the overrides of the runs a mode composes in this
    process): ``data`` as the source file (no archive), ``cache_dir`` as the data folder, no split
    cache, the scratch folder as the output folder; ``batch``: the train and validation batch size."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, workdir, True)
    overrides = [
        f"paths.data_dir={cache_dir}",
        f"paths.output_dir={workdir}",
        f"dataset.source.path={data}",
        "dataset.source.archive=null",
        "data.cache=false",
    ]
    if batch is not None:
        overrides += [f"data.batch_size={batch}", f"data.valid_batch_size={batch}"]
    return workdir, overrides


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


class StepTimer:
    """Lightning callback: stamps ``on_train_batch_start``; an iteration is stamp to stamp."""

    def __init__(self, device: str) -> None:
        import lightning.pytorch as L

        class _Callback(L.Callback):
            def on_train_batch_start(_self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
                _sync(device)
                self.stamps.append(time.perf_counter())

            def on_train_end(_self, trainer: Any, pl_module: Any) -> None:
                _sync(device)
                self.stamps.append(time.perf_counter())

        self.callback = _Callback()
        self.stamps: list[float] = []

    def iterations(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]


def _bare_step(module: Any, theta_opt: Any, lambda_opt: Any, batch: dict[str, Any]) -> None:
    """One iteration of ``MFBPRModule.training_step`` (+ ``LambdaOptModule.before_theta_step``)
    without Lightning: the same step functions (:mod:`lopt.lookahead.steps`) on the same module, driven
    by raw torch optimizers (the loop-overhead reference)."""
    from lopt.lookahead.steps import lambda_step, theta_step, train_loss
    from lopt.models.rows import batch_rows

    theta_opt.zero_grad(set_to_none=True)
    # the batch's rows once, shared by the steps, as the module's training_step does
    rows = batch_rows(batch["train"], module.model.n_users, module.model.n_items)
    loss = train_loss(module.model, batch["train"], rows)
    if loss.device.type == "cpu" and not bool(loss.isfinite()):
        raise RuntimeError("non-finite loss")
    loss.backward()
    if lambda_opt is not None:
        lambda_step(
            module.model,
            theta_opt,
            lambda_opt,
            module.granularity,
            batch["train"],
            batch["valid"],
            scope=module.penalty_scope,
            scale=module.penalty_scale,
            clip_norm=module.grad_clip_norm,
            lambda_clip_norm=module.lambda_grad_clip_norm,
            dropout=module.lookahead_dropout,
            compiled=module.compile_lookahead,
            rows=rows,
        )
    theta_step(
        module.model,
        theta_opt,
        module.granularity,
        batch["train"],
        scope=module.penalty_scope,
        scale=module.penalty_scale,
        clip_norm=module.grad_clip_norm,
        rows=rows,
    )


def _bare_module(cfg: Any, split: Any) -> tuple[Any, Any, Any]:
    """(the module of ``cfg``, seeded 0, its raw Θ optimizer, its raw Λ optimizer over the
    learnable Λ or None for λFix): what :func:`_bare_step` drives without Lightning."""
    import lightning.pytorch as L

    from lopt.pipeline import build_module

    L.seed_everything(0, verbose=False)
    module = build_module(cfg, split.n_users, split.n_items)
    theta = module.make_theta_optimizer(module.model.parameters())
    lam = None
    if hasattr(module, "make_lambda_optimizer"):
        lam = module.make_lambda_optimizer([p for p in module.granularity.parameters() if p.requires_grad])
    return module, theta, lam


def floor_adam(n_users: int, n_items: int, dim: int, device: str, steps: int) -> list[float]:
    """Seconds of ``steps`` fused dense Adam updates over a (n_users + n_items) × dim parameter set
    (two tables, dense gradients set once) alone: the memory-bandwidth floor of a dense Θ-step."""
    import torch

    params = [torch.nn.Parameter(torch.randn(n, dim, device=device) * 0.01) for n in (n_users, n_items)]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt = torch.optim.Adam(params, lr=1e-3, fused=True)
    times = []
    for _ in range(steps + 1):
        _sync(device)
        started = time.perf_counter()
        opt.step()
        _sync(device)
        times.append(time.perf_counter() - started)
    del opt, params
    return times[1:]  # the first step allocates the moments


class EpochTimer:
    """Lightning callback: the seconds from ``on_train_epoch_start`` to ``on_train_epoch_end``."""

    def __init__(self, device: str) -> None:
        import lightning.pytorch as L

        class _Callback(L.Callback):
            def on_train_epoch_start(_self, trainer: Any, pl_module: Any) -> None:
                _sync(device)
                self.started = time.perf_counter()

            def on_train_epoch_end(_self, trainer: Any, pl_module: Any) -> None:
                _sync(device)
                self.seconds.append(time.perf_counter() - self.started)

        self.callback = _Callback()
        self.started = 0.0
        self.seconds: list[float] = []


# --------------------------------------------------------------------------- the benchmark
def run(
    shape: str,
    device: str,
    cache_dir: Path,
    threads: int | None,
    ratings: Path | None = None,
    batch: int | None = None,
    compile_lookahead: bool | None = None,
) -> dict[str, Any]:
    """All measurements in one process. ``ratings``: time a real MovieLens file (``u.data`` tab or
    ``::`` ratings) instead of the synthetic ``shape`` (whose schedule is then used);
    ``compile_lookahead``: force the λOpt look-ahead kernels compiled or eager (None: as configured)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    load_before = os.getloadavg()
    path = ratings if ratings is not None else ensure_file(cache_dir, shape)
    batch_size = batch or BATCH[shape]

    import lightning.pytorch as L
    from omegaconf import OmegaConf, open_dict

    from lopt.data.datamodule import TRAIN_STREAM, TripleEpochs
    from lopt.data.preprocess import prepare_split
    from lopt.data.readers import read_movielens_dat, read_movielens_tab
    from lopt.data.sampling import NegativeSampler
    from lopt.pipeline import build_module, build_trainer, prepare_data, quiet_third_party

    quiet_third_party()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*(max_steps|GPU available|TPU available|LeafSpec).*")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"lightning.*")
    warmup, per_round, rounds, sample_epochs = SCHEDULES[shape]
    out: dict[str, Any] = {
        "shape": "file" if ratings else shape,
        "device": device,
        "data_file": path.name,  # a name, not a machine path (records are committed)
        "batch_size": batch_size,
    }
    print(f"bench: shape {shape}, device {device}, torch threads {torch.get_num_threads()}", file=sys.stderr)

    # ---- preprocessing (no split cache)
    ml10m = _compose("ml10m_fix", [])
    preprocess = OmegaConf.to_container(ml10m.dataset.preprocess, resolve=True)
    started = time.perf_counter()
    reader = read_movielens_tab if path.suffix == ".data" else read_movielens_dat
    split = prepare_split(reader(path), **preprocess)
    out["prep_seconds"] = time.perf_counter() - started
    out["peak_rss_mb_by_phase"] = {"prep": _rss_mb()}
    out["n_users"], out["n_items"] = split.n_users, split.n_items
    out["n_train"] = len(split.train_users)
    print(f"  prep {out['prep_seconds']:.2f} s", file=sys.stderr, flush=True)

    # ---- one epoch of training triples (permutation + negatives), as TripleEpochs draws them
    started = time.perf_counter()
    sampler = NegativeSampler(split.n_items, split.train_users, split.train_items, n_users=split.n_users)
    out["sampler_build_seconds"] = time.perf_counter() - started
    epochs = TripleEpochs(split.train_users, split.train_items, sampler, batch_size, 0, TRAIN_STREAM)
    times = []
    for epoch in range(sample_epochs):
        started = time.perf_counter()
        epochs.epoch_triples(epoch)
        times.append(time.perf_counter() - started)
    out["sample_seconds_per_epoch"] = statistics.median(times)
    del epochs, sampler
    out["peak_rss_mb_by_phase"]["sampling"] = _rss_mb()
    print(f"  sample {out['sample_seconds_per_epoch']:.2f} s/epoch", file=sys.stderr, flush=True)

    # ---- training iterations, the real code path
    # the runs' checkpoints and logs: each method's removed after its run, the rest at exit
    # (a large-shape checkpoint with its optimizer states is gigabytes)
    workdir, common = _scratch_run_overrides(path, cache_dir, "lopt-bench-", batch_size)
    if device == "cuda":
        common.append("trainer=gpu")
    step_only = shape in STEP_ONLY_SHAPES and ratings is None
    methods = [key for key in METHODS if not (step_only and key.endswith("_unfused"))]
    cfgs = {key: method_config(key, common, compile_lookahead) for key in methods}
    out["lambda_optimizers"] = {
        key: OmegaConf.to_container(cfg.lambda_optimizer) for key, cfg in cfgs.items() if "lambda_optimizer" in cfg
    }
    out["compile_lookahead"] = {
        key: bool(cfg.model.compile_lookahead) for key, cfg in cfgs.items() if "compile_lookahead" in cfg.model
    }
    iterations: dict[str, list[float]] = {key: [] for key in methods}
    bare: list[float] = []
    floor: list[float] = []
    fix_module = None
    datamodule = None
    for round_ in range(rounds):
        for key, cfg in cfgs.items():
            L.seed_everything(0, verbose=False)
            if datamodule is None or bool(cfg.model.needs_valid_triples) != datamodule.valid_triples:
                # the split prepared above (the source file is not read again); the previous data
                # is dropped first so that the two never coexist
                datamodule = evaluators = None
                _release_memory()
                datamodule, _, evaluators = prepare_data(cfg, split=split)
            module = build_module(cfg, split.n_users, split.n_items)
            module.use_evaluators(evaluators)
            with open_dict(cfg):
                cfg.trainer.max_steps = warmup + per_round
                cfg.trainer.max_epochs = -1
                cfg.trainer.limit_val_batches = 0
            trainer, _ = build_trainer(cfg, workdir / f"{key}-{round_}", split, evaluators)
            timer = StepTimer(device)
            trainer.callbacks.append(timer.callback)
            trainer.fit(module, datamodule=datamodule)
            shutil.rmtree(workdir / f"{key}-{round_}", ignore_errors=True)
            iterations[key] += timer.iterations()[warmup:]
            if key == "fix" and not step_only:
                fix_module = module
            print(
                f"  round {round_} {key:13s} median {statistics.median(timer.iterations()[warmup:]) * 1e3:8.1f} ms"
                f" RSS {_rss_mb():.0f}",
                file=sys.stderr,
                flush=True,
            )
            if key == "fix" and not step_only:
                # The same step without Lightning: same module, its own raw optimizers, same batches.
                theta_opt = module.make_theta_optimizer(module.model.parameters())
                batches = iter(datamodule.train_dataloader())
                for i in range(warmup + per_round):
                    batch = next(batches)
                    if device == "cuda":
                        batch = {k: tuple(t.cuda() for t in v) for k, v in batch.items()}
                    _sync(device)
                    started = time.perf_counter()
                    _bare_step(module, theta_opt, None, batch)
                    _sync(device)
                    if i >= warmup:
                        bare.append(time.perf_counter() - started)
                del theta_opt, batches
            del trainer, module
            _release_memory()
        # the dense-step floor, in the same rounds: one fused Adam update over |U|+|I| rows alone
        floor += floor_adam(split.n_users, split.n_items, int(cfgs["fix"].model.dim), device, per_round)
        _release_memory()
    for key in methods:
        out[f"{key}_step_seconds"] = statistics.median(iterations[key])
        out[f"{key}_step_iqr_seconds"] = _iqr(iterations[key])
    fix = out["fix_step_seconds"]
    out["ratio_d_over_fix"] = out["opt_d_step_seconds"] / fix
    out["ratio_dui_over_fix"] = out["opt_dui_step_seconds"] / fix
    out["ratio_dui_adam_over_fix"] = out["opt_dui_adam_step_seconds"] / fix
    for kind in ("unfused", "sparse"):
        base = out.get(f"fix_{kind}_step_seconds")
        if base is None:
            continue
        for method in ("d", "dui", "dui_adam"):
            out[f"ratio_{method}_{kind}_over_fix_{kind}"] = out[f"opt_{method}_{kind}_step_seconds"] / base
        out[f"ratio_fix_{kind}_over_fix"] = base / fix
    out["floor_adam_seconds"] = statistics.median(floor)
    out["ratio_fix_over_floor"] = fix / out["floor_adam_seconds"]
    out["timed_iterations_per_method"] = len(iterations["fix"])
    out["peak_rss_mb_by_phase"]["iterations"] = _rss_mb()
    if step_only:
        out.update(_finish(load_before, device))
        return out
    out["fix_bare_step_seconds"] = statistics.median(bare)
    out["loop_overhead_fraction"] = fix / out["fix_bare_step_seconds"] - 1.0

    # ---- one full epoch of the main methods (what a user waits for)
    datamodule = evaluators = None
    fix_module.use_evaluators({})
    _release_memory()
    for key, suffix in EPOCH_KEYS.items():
        cfg = cfgs[key]
        L.seed_everything(0, verbose=False)
        datamodule, _, evaluators = prepare_data(cfg, split=split)
        module = build_module(cfg, split.n_users, split.n_items)
        module.use_evaluators(evaluators)
        with open_dict(cfg):
            cfg.trainer.max_steps = -1
            cfg.trainer.max_epochs = 1
            cfg.trainer.limit_val_batches = 0
        trainer, _ = build_trainer(cfg, workdir / f"{key}-epoch", split, evaluators)
        epoch_timer = EpochTimer(device)
        trainer.callbacks.append(epoch_timer.callback)
        trainer.fit(module, datamodule=datamodule)
        shutil.rmtree(workdir / f"{key}-epoch", ignore_errors=True)
        out[f"epoch_seconds_{suffix}"] = epoch_timer.seconds[0]
        out[f"epoch_iterations_{suffix}"] = int(trainer.global_step)
        print(
            f"  epoch {key:13s} {epoch_timer.seconds[0]:8.1f} s ({trainer.global_step} iterations)",
            file=sys.stderr,
            flush=True,
        )
        del trainer, module
        datamodule = evaluators = None
        _release_memory()
    for suffix in ("fix_sparse", "dui_sparse"):
        out[f"samples_per_second_{suffix}"] = out["n_train"] / out[f"epoch_seconds_{suffix}"]
    out["peak_rss_mb_by_phase"]["epochs"] = _rss_mb()

    # ---- full-ranking evaluation of the test split
    module = fix_module
    cfg = cfgs["fix"]
    datamodule, _, evaluators = prepare_data(cfg, split=split)
    module.use_evaluators(evaluators)
    trainer = L.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    _sync(device)
    started = time.perf_counter()
    trainer.test(module, datamodule=datamodule, verbose=False)
    _sync(device)
    out["eval_seconds"] = time.perf_counter() - started
    out["eval_users"] = int(evaluators["test"].users.numel())
    out["eval_test_auc"] = module.test_metrics.get("auc", math.nan)
    # the same model and split under the standard protocol (the default protocol's data dropped first)
    datamodule = evaluators = None
    module.use_evaluators({})
    _release_memory()
    datamodule, _, evaluators = prepare_data(
        method_config("fix", [*common, "protocol=standard"], compile_lookahead), split=split
    )
    module.use_evaluators(evaluators)
    _sync(device)
    started = time.perf_counter()
    trainer.test(module, datamodule=datamodule, verbose=False)
    _sync(device)
    out["eval_standard_seconds"] = time.perf_counter() - started
    out["eval_standard_recall_at_20"] = module.test_metrics.get("recall@20", math.nan)
    del fix_module, module, trainer, datamodule
    out["peak_rss_mb_by_phase"]["evaluation"] = _rss_mb()
    out.update(_finish(load_before, device))
    return out


def _finish(load_before: tuple[float, float, float], device: str) -> dict[str, Any]:
    """The run's memory, machine and load keys."""
    import numpy as np
    import torch

    return {
        "peak_rss_mb": _rss_mb(),
        "torch_threads": torch.get_num_threads(),
        "machine": _machine(device),
        "load_avg": {"before": list(load_before), "after": list(os.getloadavg())},
        "numpy": np.__version__,
    }


def _iqr(values: list[float]) -> float:
    if len(values) < 4:
        return 0.0
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


# --------------------------------------------------------------------------- the ml-100k shape
#: The ml-100k shape's schedule: (warm-up iterations of each fit and of each bare epoch,
#: interleaved rounds, epochs per fit, of which the first is warm-up).
ML100K_SCHEDULE = (10, 4, 3)
#: The ml-100k shape's experiment configs (batch 1024, d = 128, Adam with clip 100; λOpt-DUI with
#: its configured LambdaAdam).
#: The ml-100k variants timed: key → (experiment, its overrides). ``dui_eager``: λOpt-DUI with the
#: look-ahead kernels eager, to show what compiling them (the experiments' setting) buys.
ML100K_METHODS = {
    "fix": ("ml100k_fix", []),
    "dui": ("ml100k_dui", []),
    "dui_eager": ("ml100k_dui", ["model.compile_lookahead=false"]),
}
ML100K_KEYS = (
    "ml100k_bare_step_seconds",
    "ml100k_bare_eval_seconds",
    "ml100k_fix_step_seconds",
    "ml100k_dui_step_seconds",
    "ml100k_epoch_seconds_fix",
    "ml100k_epoch_seconds_dui",
    "ml100k_epoch_eval_seconds_fix",
    "ml100k_epoch_eval_seconds_dui",
    "ml100k_epoch_eval_seconds_dui_eager",
    "ml100k_eval_seconds",
    "ml100k_ratio_fix_over_bare",
    "ml100k_ratio_dui_over_fix_epoch",
    "ml100k_ratio_epoch_eval_over_epoch",
    "startup_seconds",
    "ml100k_load_avg",
)


def bare_fix_steps(
    batches: list[Any], n_users: int, n_items: int, dim: int, lam: float, lr: float
) -> tuple[list[float], Any, Any]:
    """The floor of a λFix step, in plain eager PyTorch: gather, BPR, L2 on the batch's rows,
    backward, one fused Adam step; the seconds of each of ``batches`` and the final (P, Q)."""
    import torch
    from torch.nn import functional as F

    P = torch.nn.Parameter(torch.randn(n_users, dim) * 0.1)
    Q = torch.nn.Parameter(torch.randn(n_items, dim) * 0.1)
    opt = torch.optim.Adam([P, Q], lr=lr, fused=True)
    times = []
    for users, pos, neg in batches:
        started = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        pu, qi, qj = P[users], Q[pos], Q[neg]
        x = (pu * qi).sum(-1) - (pu * qj).sum(-1)
        l2 = pu.square().sum() + qi.square().sum() + qj.square().sum()
        loss = F.softplus(-x).mean() + lam * l2 / users.numel()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - started)
    return times, P, Q


def bare_eval_seconds(P: Any, Q: Any, users: Any, k: int = 100, repeats: int = 5) -> float:
    """The floor of an evaluation: score ``users`` against every item and take a top-``k``."""
    import torch

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        with torch.no_grad():
            torch.topk(P.detach().index_select(0, users) @ Q.detach().T, min(k, Q.shape[0]), dim=1)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


class EpochStamps:
    """Lightning callback: stamps every ``on_train_epoch_start`` and the end of fit, so that one
    epoch is stamp to stamp (its training, then its validation and checkpoints when evaluated)."""

    def __init__(self) -> None:
        import lightning.pytorch as L

        class _Callback(L.Callback):
            def on_train_epoch_start(_self, trainer: Any, pl_module: Any) -> None:
                self.stamps.append(time.perf_counter())

            def on_fit_end(_self, trainer: Any, pl_module: Any) -> None:
                self.stamps.append(time.perf_counter())

        self.callback = _Callback()
        self.stamps: list[float] = []

    def epochs(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]


#: Packages a plain run must not import (W&B only with logger=wandb, optuna only in a study,
#: plotting only in the results tools); matplotlib is listed but Lightning's torchmetrics imports it.
OPTIONAL_IMPORTS = ("wandb", "optuna", "matplotlib", "seaborn", "plotly")


class FirstStepStamp:
    """Lightning callback for ``startup_seconds``: writes ``{"time": time.time(), "imported": [the
    OPTIONAL_IMPORTS loaded by then], "modules": [every module loaded by then]}`` to ``path``
    (JSON) at the first training step, then stops the run
    (``+callbacks.first_step._target_=bench.FirstStepStamp``)."""

    def __new__(cls, path: str) -> Any:  # a Lightning callback built where Lightning is imported
        import lightning.pytorch as L

        class _Callback(L.Callback):
            def on_train_batch_start(_self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
                if not Path(path).exists():
                    imported = [name for name in OPTIONAL_IMPORTS if name in sys.modules]
                    stamp = {"time": time.time(), "imported": imported, "modules": sorted(sys.modules)}
                    Path(path).write_text(json.dumps(stamp))
                trainer.should_stop = True

        return _Callback()


def first_step_stamp(code: Path, workdir: Path, name: str, data: str = "data") -> dict[str, Any]:
    """The :class:`FirstStepStamp` record of one ``python run.py`` of ``code`` (a checkout of
    lopt; synthetic data, defaults, its cache in ``workdir/data``), stopped at its first training
    step."""
    stamp = workdir / f"first-step-{name}.json"
    cmd = [
        sys.executable,
        str(code / "run.py"),
        "logger=none",
        "callbacks.progress.style=none",
        f"paths.data_dir={workdir / data}",
        f"hydra.run.dir={workdir / f'startup-{name}'}",
        "+callbacks.first_step._target_=bench.FirstStepStamp",
        f"+callbacks.first_step.path={stamp}",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), str(REPO_ROOT / "experiments")])}
    started = time.time()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not stamp.is_file():
        raise RuntimeError(f"startup run of {code} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    record = json.loads(stamp.read_text())
    return {**record, "seconds": record["time"] - started}


def outside_modules(modules: list[str]) -> set[str]:
    """The modules of ``modules`` that are not lopt's own (its layout may differ between two
    checkouts; what a start-up costs beyond lopt is the rest), nor the timing callback's."""
    return {m for m in modules if m.split(".")[0] not in {"lopt", "bench", "hydra_plugins", "__main__"}}


def run_startup_imports(before: Path) -> dict[str, Any]:
    """``--startup-imports DIR``: the modules a run of this checkout and of ``DIR`` (e.g. a git
    worktree of the baseline commit) have imported by their first training step, and those
    outside lopt that only one of them imports: a start-up that cannot have grown by what it
    imports, whatever the machine's noise does to ``startup_seconds``."""
    workdir = Path(tempfile.mkdtemp(prefix="lopt-bench-imports-"))
    atexit.register(shutil.rmtree, workdir, True)
    # each from an empty data folder: a run that finds the synthetic file and split cached imports
    # other modules (zip and archive codecs) than one that writes them
    after = first_step_stamp(REPO_ROOT, workdir, "after", data="data-after")
    prior = first_step_stamp(before.resolve(), workdir, "before", data="data-before")
    mine, theirs = outside_modules(after["modules"]), outside_modules(prior["modules"])
    return {
        "startup_imports_before_commit": code_commit(before.resolve()),
        "startup_modules": len(after["modules"]),
        "startup_modules_before": len(prior["modules"]),
        "startup_modules_outside_lopt": len(mine),
        "startup_modules_outside_lopt_before": len(theirs),
        "startup_modules_only_after": sorted(mine - theirs),
        "startup_modules_only_before": sorted(theirs - mine),
        "startup_seconds_one_run": after["seconds"],
        "startup_seconds_one_run_before": prior["seconds"],
    }


def format_startup_imports(result: dict[str, Any]) -> str:
    """The ``--startup-imports`` record as text: the counts, then each side's own modules."""
    lines = [
        f"modules by the first step: {result['startup_modules']} (before: {result['startup_modules_before']}); "
        f"outside lopt: {result['startup_modules_outside_lopt']} "
        f"(before: {result['startup_modules_outside_lopt_before']})",
        f"only this checkout imports: {', '.join(result['startup_modules_only_after']) or 'none'}",
        f"only the baseline imports: {', '.join(result['startup_modules_only_before']) or 'none'}",
    ]
    return "\n".join(lines)


def startup_seconds(workdir: Path, runs: int = 2) -> tuple[float, list[str]]:
    """Seconds from launching ``python run.py`` (synthetic data, defaults) to its first training
    step, median of ``runs`` fresh processes (each stopped after that step), and the
    :data:`OPTIONAL_IMPORTS` those processes had loaded by then."""
    times = []
    imported: set[str] = set()
    for i in range(runs):
        record = first_step_stamp(REPO_ROOT, workdir, str(i))
        times.append(record["seconds"])
        imported.update(record["imported"])
    return statistics.median(times), sorted(imported)


def run_ml100k(data: Path, cache_dir: Path, threads: int | None, schedule: tuple[int, int, int]) -> dict[str, Any]:
    """The ml-100k shape (``--shape ml100k --data u.data``), in one process: the bare eager λFix
    step and evaluation (the floor), lopt's λFix and λOpt-DUI iterations under the Trainer,
    whole epochs with and without the valid evaluation, the evaluation alone, and the start-up
    of ``python run.py``."""
    import torch

    torch.set_num_threads(threads or 1)
    load_before = os.getloadavg()
    import lightning.pytorch as L
    from omegaconf import open_dict

    from lopt.pipeline import build_module, build_trainer, prepare_data, quiet_third_party

    quiet_third_party()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*(max_steps|GPU available|TPU available|LeafSpec).*")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"lightning.*")
    warmup, rounds, n_epochs = schedule
    workdir, common = _scratch_run_overrides(data, cache_dir, "lopt-bench-")
    cfgs = {key: _compose(experiment, [*common, *extra]) for key, (experiment, extra) in ML100K_METHODS.items()}
    # the file's name, not its path: records are committed, and a path names one machine
    out: dict[str, Any] = {"ml100k_data_file": data.name}
    print(f"bench: shape ml100k ({data}), torch threads {torch.get_num_threads()}", file=sys.stderr)

    # Everything is timed in interleaved rounds (the bare floor, then each method without and
    # with validation) so that load drifts on a shared machine hit them alike.
    data = {}
    for key, cfg in cfgs.items():
        data[key] = prepare_data(cfg) if not data else prepare_data(cfg, split=data["fix"][1])
    split = data["fix"][1]
    batches = [batch["train"] for batch in data["fix"][0].train_dataloader()]
    valid_users = data["fix"][2]["valid"].users
    fix_cfg = cfgs["fix"]
    bare: list[float] = []
    bare_eval: list[float] = []
    eval_times: list[float] = []
    steps: dict[str, list[float]] = {key: [] for key in cfgs}
    epochs: dict[tuple[str, bool], list[float]] = {(key, e): [] for key in cfgs for e in (False, True)}
    for round_ in range(rounds):
        # the floor: bare eager λFix steps on lopt's own batches, and a bare evaluation
        L.seed_everything(round_, verbose=False)
        times, P, Q = bare_fix_steps(
            batches, split.n_users, split.n_items, int(fix_cfg.model.dim), float(fix_cfg.model.lambda_value), 1e-3
        )
        bare += times[warmup:]
        bare_eval.append(bare_eval_seconds(P, Q, valid_users))
        # lopt's iterations, epochs and evaluation under the Trainer, as run.py builds them
        for key, cfg in cfgs.items():
            datamodule, _, evaluators = data[key]
            for evaluate in (False, True):
                L.seed_everything(0, verbose=False)
                module = build_module(cfg, split.n_users, split.n_items)
                module.use_evaluators(evaluators)
                run_cfg = copy.deepcopy(cfg)
                with open_dict(run_cfg):
                    run_cfg.trainer.max_epochs = n_epochs
                    run_cfg.trainer.max_steps = -1
                    if not evaluate:
                        run_cfg.trainer.limit_val_batches = 0
                run_dir = workdir / f"{key}-{round_}-{evaluate}"
                trainer, _ = build_trainer(run_cfg, run_dir, split, evaluators)
                step_timer, epoch_stamps = StepTimer("cpu"), EpochStamps()
                trainer.callbacks += [step_timer.callback, epoch_stamps.callback]
                trainer.fit(module, datamodule=datamodule)
                shutil.rmtree(run_dir, ignore_errors=True)
                epochs[key, evaluate] += epoch_stamps.epochs()[1:]  # the first epoch warms up
                if not evaluate:
                    # iterations within an epoch (the stamp pairs that span an epoch's end excluded)
                    its = step_timer.iterations()
                    steps[key] += [t for i, t in enumerate(its) if i >= warmup and (i + 1) % len(batches) != 0]
                if key == "fix" and evaluate:
                    started = time.perf_counter()
                    trainer.validate(module, datamodule=datamodule, verbose=False)
                    eval_times.append(time.perf_counter() - started)
                del trainer, module
        print(
            f"  round {round_}: bare {statistics.median(times[warmup:]) * 1e3:.2f} ms, "
            + ", ".join(f"{key} {statistics.median(steps[key]) * 1e3:.2f} ms" for key in cfgs),
            file=sys.stderr,
            flush=True,
        )
    out["ml100k_bare_step_seconds"] = statistics.median(bare)
    out["ml100k_batches_per_epoch"] = len(batches)
    out["ml100k_bare_eval_seconds"] = statistics.median(bare_eval)
    out["ml100k_eval_seconds"] = statistics.median(eval_times)
    for key in cfgs:
        out[f"ml100k_{key}_step_seconds"] = statistics.median(steps[key])
        out[f"ml100k_epoch_seconds_{key}"] = statistics.median(epochs[key, False])
        out[f"ml100k_epoch_eval_seconds_{key}"] = statistics.median(epochs[key, True])
        print(
            f"  {key}: step {out[f'ml100k_{key}_step_seconds'] * 1e3:.2f} ms, epoch "
            f"{out[f'ml100k_epoch_seconds_{key}']:.3f} s, "
            f"with evaluation {out[f'ml100k_epoch_eval_seconds_{key}']:.3f} s",
            file=sys.stderr,
            flush=True,
        )
    floor = len(batches) * out["ml100k_bare_step_seconds"] + out["ml100k_bare_eval_seconds"]
    out["ml100k_ratio_fix_over_bare"] = out["ml100k_epoch_eval_seconds_fix"] / floor
    out["ml100k_ratio_dui_over_fix_epoch"] = out["ml100k_epoch_eval_seconds_dui"] / out["ml100k_epoch_eval_seconds_fix"]
    out["ml100k_ratio_epoch_eval_over_epoch"] = out["ml100k_epoch_eval_seconds_fix"] / out["ml100k_epoch_seconds_fix"]
    out["ml100k_ratio_dui_over_fix_step"] = out["ml100k_dui_step_seconds"] / out["ml100k_fix_step_seconds"]
    out["ml100k_ratio_fix_step_over_bare"] = out["ml100k_fix_step_seconds"] / out["ml100k_bare_step_seconds"]
    out["startup_seconds"], out["startup_optional_imports"] = startup_seconds(workdir)
    print(f"  startup {out['startup_seconds']:.2f} s", file=sys.stderr, flush=True)
    # prefixed: merged into one bench.json with an ML-10M-shape run, they must not replace its keys
    out.update({f"ml100k_{key}": value for key, value in _finish(load_before, "cpu").items()})
    return out


# --------------------------------------------------------------------------- the ml-100k study
#: The fixed configurations of the timed studies (the same list before and after, so that no
#: sampler confounds the timing): 20 λ of λFix and 20 Λ learning rates of λOpt-DUI, log-spaced
#: over the tune configs' ranges (conf/tune/fix.yaml, conf/tune/lambda_opt.yaml).
def study_values(n: int, low: float, high: float) -> list[str]:
    if n == 1:
        return [f"{low:.3g}"]
    return [f"{low * (high / low) ** (i / (n - 1)):.3g}" for i in range(n)]


def study_subset(values: list[str], k: int) -> list[str]:
    """``k`` of ``values`` spread evenly over the list, its first and last included (``k`` ≥ the
    list's length: all of it): a shorter study over configurations of the very same fixed list."""
    if k >= len(values):
        return list(values)
    if k == 1:
        return [values[0]]
    return [values[round(i * (len(values) - 1) / (k - 1))] for i in range(k)]


def study_part(values: list[str], part: tuple[int, int] | None, jobs: int) -> list[str]:
    """The ``part`` = (k, n)-th of n contiguous, equal parts of ``values`` (1-based; None: all of
    it). A part holds whole batches of ``jobs`` trials, so that the batches the launcher runs are
    the whole study's and the parts' wall times sum to the study's (plus one start-up a part)."""
    if part is None:
        return list(values)
    k, n = part
    if not 1 <= k <= n or len(values) % (n * jobs):
        raise ValueError(
            f"--study-part {k}/{n}: {len(values)} configurations do not split into {n} parts of whole "
            f"batches of {jobs}; choose n dividing {len(values) // jobs}, and 1 ≤ k ≤ n"
        )
    size = len(values) // n
    return list(values[(k - 1) * size : k * size])


def _part(text: str) -> tuple[int, int]:
    """``K/N`` (``--study-part``) as (K, N)."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give K/N, e.g. 1/2") from None
    return k, n


STUDY_SWEEPS = {
    "fix": ("ml100k_fix", "model.lambda_value", 1e-6, 10.0),
    "dui": ("ml100k_dui", "lambda_optimizer.lr", 1e-4, 1.0),
}


def study_seconds(
    code: Path,
    data: Path,
    workdir: Path,
    trials: int,
    epochs: int,
    jobs: int = 2,
    shared: bool = False,
    subset: int | None = None,
    methods: tuple[str, ...] = tuple(STUDY_SWEEPS),
    part: tuple[int, int] | None = None,
) -> dict[str, float]:
    """Wall seconds of the λFix and the λOpt-DUI study of ``code`` (a checkout of lopt): each a
    ``python run.py -m`` sweep over the fixed :data:`STUDY_SWEEPS` list of ``trials`` values, the
    equal budget (``epochs`` at most, early stopping), through the local launcher ``jobs`` at a time
    (``hydra.sweeper.max_batch_size``), as users run studies. ``shared``: the trials share
    processes instead: the list dealt round-robin to ``jobs`` concurrent ``run.py -m`` processes of
    Hydra's basic launcher (one trial after another in one process, which reuses the imports, the
    compiled kernels and the prepared split), each at ``cores // jobs`` threads. ``subset``: only
    that many configurations of the list (:func:`study_subset`); ``methods``: the studies timed
    (keys of :data:`STUDY_SWEEPS`); ``part``: only that part of each list (:func:`study_part`)."""
    out = {}
    threads = str(max(1, len(os.sched_getaffinity(0)) // jobs))
    for key in methods:
        experiment, param, low, high = STUDY_SWEEPS[key]
        sweep_dir = workdir / f"study-{code.name}-{key}"
        values = study_part(study_subset(study_values(trials, low, high), subset or trials), part, jobs)
        common = [
            sys.executable,
            str(code / "run.py"),
            "-m",
            f"+experiment={experiment}",
            "+budget=equal",
            f"budget.max_epochs={epochs}",
            "callbacks.early_stopping.min_delta=0",  # the same stopping rule in every version timed
            f"dataset.source.path={data}",
            "dataset.source.archive=null",
            f"paths.data_dir={workdir / 'data'}",
        ]
        env = {**os.environ, "PYTHONPATH": str(code), "WANDB_MODE": "disabled"}
        if shared:
            env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
            cmds = [
                [*common, "hydra/launcher=basic", f"hydra.sweep.dir={sweep_dir}/{part}", f"{param}={','.join(chunk)}"]
                for part, chunk in enumerate(values[i::jobs] for i in range(jobs))
                if chunk
            ]
        else:
            cmds = [
                [
                    *common,
                    "hydra/launcher=local",
                    f"hydra.sweeper.max_batch_size={jobs}",
                    f"hydra.sweep.dir={sweep_dir}",
                    f"{param}={','.join(values)}",
                ]
            ]
        started = time.perf_counter()
        procs = [
            subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for cmd in cmds
        ]
        outputs = [proc.communicate() for proc in procs]
        out[key] = time.perf_counter() - started
        done = sorted(sweep_dir.glob("**/metrics.json"))
        failed = [(proc.returncode, err) for proc, (_, err) in zip(procs, outputs, strict=True) if proc.returncode != 0]
        if failed or len(done) != len(values):
            raise RuntimeError(
                f"the {key} study of {code} failed (exits {[proc.returncode for proc in procs]}, {len(done)} of "
                f"{len(values)} runs finished): {(failed[0][1] if failed else outputs[0][1])[-3000:]}"
            )
        shutil.rmtree(sweep_dir, ignore_errors=True)
        mode = "shared processes" if shared else "launcher"
        print(f"  study {code} {key} ({mode}): {out[key]:.1f} s", file=sys.stderr, flush=True)
    return out


def run_study(
    data: Path,
    before: Path | None,
    trials: int,
    epochs: int,
    shared: bool = False,
    subset: int | None = None,
    methods: tuple[str, ...] = tuple(STUDY_SWEEPS),
    part: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """``--study``: the ml-100k studies of this checkout and, with ``before``, of that checkout
    (e.g. a git worktree of the baseline commit), back to back on this machine; with ``shared``
    also this checkout's studies with the trials sharing processes (``ml100k_study_seconds_shared``);
    with ``subset``, every study runs only that many configurations of its fixed list; ``methods``:
    which studies (``study_methods``; the totals sum those only); ``part`` = (k, n): only the k-th
    of n parts of each list (``study_part``; :func:`combine_studies` sums the parts)."""
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="lopt-bench-study-"))
    atexit.register(shutil.rmtree, workdir, True)
    timed = min(subset or trials, trials)
    out: dict[str, Any] = {
        "study_trials": trials,
        "study_trials_timed": timed,
        "study_epochs": epochs,
        "study_jobs": 2,
        "study_methods": list(methods),
        "study_part": list(part) if part else None,
        "study_thread_variables": {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
    }
    after = study_seconds(REPO_ROOT, data, workdir, trials, epochs, subset=subset, methods=methods, part=part)
    out["ml100k_study_seconds"] = sum(after.values())
    out["ml100k_study_seconds_by_method"] = after
    if before is not None:
        prior = study_seconds(
            before.resolve(), data, workdir, trials, epochs, subset=subset, methods=methods, part=part
        )
        out["ml100k_study_seconds_before"] = sum(prior.values())
        out["ml100k_study_seconds_before_by_method"] = prior
        out["ml100k_study_before_code"] = before.resolve().name  # its commit: ml100k_study_before_commit
        out["ml100k_study_before_commit"] = code_commit(before.resolve())
        out["ml100k_study_ratio"] = out["ml100k_study_seconds"] / out["ml100k_study_seconds_before"]
    if shared:
        in_shared = study_seconds(
            REPO_ROOT, data, workdir, trials, epochs, shared=True, subset=subset, methods=methods, part=part
        )
        out["ml100k_study_seconds_shared"] = sum(in_shared.values())
        out["ml100k_study_seconds_shared_by_method"] = in_shared
    out["study_load_avg"] = {"before": list(load_before), "after": list(os.getloadavg())}
    return out


#: Keys that must agree between study records combined by :func:`combine_studies`.
STUDY_SETTINGS = ("study_trials", "study_trials_timed", "study_epochs", "study_jobs", "ml100k_study_before_commit")


def combine_studies(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One study record from ``--study`` records of disjoint pieces, each pair timed back to back
    in its own invocation: a piece is one method's whole study (``--study-methods``) or one part
    of it (``--study-part k/n``). The per-method seconds are summed over its parts, the totals
    and the ratio recomputed from them, and each record's methods, part, commits and load kept
    under ``study_pairs``. ValueError when pieces overlap, a method's parts do not make its whole
    study, or the settings (:data:`STUDY_SETTINGS`) differ."""
    if not records:
        raise ValueError("no study records to combine")
    parts: dict[str, list[tuple[int, int]]] = {}
    for record in records:
        if "study_methods" not in record:
            raise ValueError("a record without study_methods: not a --study record of this bench")
        k, n = record.get("study_part") or (1, 1)
        for method in record["study_methods"]:
            seen = parts.setdefault(method, [])
            if (k, n) in seen or (seen and seen[0][1] != n):
                raise ValueError(f"study records overlap in {method} (part {k}/{n}): each piece must be timed once")
            seen.append((k, n))
    incomplete = {m: sorted(p) for m, p in parts.items() if sorted(k for k, _ in p) != list(range(1, p[0][1] + 1))}
    if incomplete:
        raise ValueError(f"study records lack parts of {incomplete}: every part 1..n of a method must be combined")
    for key in STUDY_SETTINGS:
        values = {json.dumps(record.get(key)) for record in records}
        if len(values) > 1:
            raise ValueError(f"study records differ in {key}: {sorted(values)}")
    first = records[0]
    out: dict[str, Any] = {key: first[key] for key in STUDY_SETTINGS if key in first}
    out["study_methods"] = list(parts)
    for suffix in ("", "_before", "_shared"):
        by_method = f"ml100k_study_seconds{suffix}_by_method"
        if all(by_method in record for record in records):
            merged: dict[str, float] = {}
            for record in records:
                for key, value in record[by_method].items():
                    merged[key] = merged.get(key, 0.0) + value
            out[by_method] = merged
            out[f"ml100k_study_seconds{suffix}"] = sum(merged.values())
    if "ml100k_study_seconds_before" in out:
        out["ml100k_study_ratio"] = out["ml100k_study_seconds"] / out["ml100k_study_seconds_before"]
    pair_keys = (
        "study_methods",
        "study_part",
        "ml100k_study_code_commit",
        "ml100k_study_before_code",
        "study_load_avg",
    )
    out["study_pairs"] = [{key: record[key] for key in pair_keys if key in record} for record in records]
    return out


# --------------------------------------------------------------------------- one run's memory
RSS_MARK = "__children_maxrss_kb__"
RSS_CHILD = (
    f"RSS_MARK = {RSS_MARK!r}; "
    "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
    "print('\\n' + RSS_MARK, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)"
)


def run_rss(cache_dir: Path, shape: str, epochs: int) -> dict[str, Any]:
    """``--rss``: the peak resident memory of one ``ml10m_dui`` training run (``epochs`` epochs) on
    the shape's synthetic file, measured on its own: ``python run.py`` is the only child of a small
    wrapper process that reports its children's ``ru_maxrss``."""
    load_before = os.getloadavg()
    path = ensure_file(cache_dir, shape)
    workdir = Path(tempfile.mkdtemp(prefix="lopt-bench-rss-"))
    atexit.register(shutil.rmtree, workdir, True)
    cmd = [
        sys.executable,
        "-c",
        RSS_CHILD,
        sys.executable,
        str(REPO_ROOT / "run.py"),
        "+experiment=ml10m_dui",
        f"trainer.max_epochs={epochs}",
        f"dataset.source.path={path}",
        "dataset.source.archive=null",
        f"paths.data_dir={workdir / 'data'}",
        f"hydra.run.dir={workdir / 'run'}",
        "callbacks.progress.style=none",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "WANDB_MODE": "disabled"}
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the ml10m_dui run failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return {
        "peak_rss_mb_ml10m_dui_run": _children_rss_kb(proc.stdout) / 1024.0,
        "rss_run_seconds": time.perf_counter() - started,
        "rss_run_shape": shape,
        "rss_run_epochs": epochs,
        "rss_load_avg": {"before": list(load_before), "after": list(os.getloadavg())},
    }


def _children_rss_kb(stdout: str) -> int:
    """The ``ru_maxrss`` (KiB) that :data:`RSS_CHILD` printed last."""
    lines = [line for line in stdout.splitlines() if line.startswith(RSS_MARK)]
    if not lines:
        raise RuntimeError(f"the memory wrapper printed no {RSS_MARK} line: {stdout[-2000:]}")
    return int(lines[-1].split()[1])


TABLE = (
    ("prep_seconds", "s", 20.0),
    ("sample_seconds_per_epoch", "s", 2.0),
    ("fix_step_seconds", "ms", None),
    ("opt_d_step_seconds", "ms", None),
    ("opt_dui_step_seconds", "ms", None),
    ("opt_dui_adam_step_seconds", "ms", None),
    ("ratio_d_over_fix", "x", 1.2),
    ("ratio_dui_over_fix", "x", 1.3),
    ("ratio_dui_adam_over_fix", "x", 1.5),
    ("fix_unfused_step_seconds", "ms", None),
    ("opt_d_unfused_step_seconds", "ms", None),
    ("opt_dui_unfused_step_seconds", "ms", None),
    ("opt_dui_adam_unfused_step_seconds", "ms", None),
    ("fix_sparse_step_seconds", "ms", None),
    ("opt_d_sparse_step_seconds", "ms", None),
    ("opt_dui_sparse_step_seconds", "ms", None),
    ("opt_dui_adam_sparse_step_seconds", "ms", None),
    ("ratio_fix_sparse_over_fix", "x", 0.25),
    ("ratio_dui_sparse_over_fix_sparse", "x", 1.5),
    ("floor_adam_seconds", "ms", None),
    ("ratio_fix_over_floor", "x", 2.5),
    ("epoch_seconds_fix", "s", None),
    ("epoch_seconds_dui", "s", None),
    ("epoch_seconds_fix_sparse", "s", None),
    ("epoch_seconds_dui_sparse", "s", None),
    ("samples_per_second_fix_sparse", "/s", 550_000.0),
    ("samples_per_second_dui_sparse", "/s", 367_000.0),
    ("fix_bare_step_seconds", "ms", None),
    ("loop_overhead_fraction", "%", 0.05),
    ("eval_seconds", "s", 60.0),
    ("eval_standard_seconds", "s", 60.0),
    ("peak_rss_mb", "MB", 4000.0),
    ("ml100k_bare_step_seconds", "ms", None),
    ("ml100k_fix_step_seconds", "ms", None),
    ("ml100k_dui_step_seconds", "ms", None),
    ("ml100k_dui_eager_step_seconds", "ms", None),
    ("ml100k_ratio_fix_step_over_bare", "x", None),
    ("ml100k_bare_eval_seconds", "ms", None),
    ("ml100k_eval_seconds", "ms", None),
    ("ml100k_epoch_seconds_fix", "s", None),
    ("ml100k_epoch_eval_seconds_fix", "s", None),
    ("ml100k_epoch_seconds_dui", "s", None),
    ("ml100k_epoch_eval_seconds_dui", "s", None),
    ("ml100k_epoch_eval_seconds_dui_eager", "s", None),
    ("ml100k_ratio_fix_over_bare", "x", 1.3),
    ("ml100k_ratio_dui_over_fix_epoch", "x", 1.5),
    ("ml100k_ratio_epoch_eval_over_epoch", "x", 1.2),
    ("startup_seconds", "s", None),
    ("ml100k_study_seconds", "s", None),
    ("ml100k_study_seconds_before", "s", None),
    ("ml100k_study_ratio", "x", 0.6),
    ("ml100k_study_seconds_shared", "s", None),
    ("floor_ml100k_ratio_dui_over_fix_epoch", "x", None),
    ("floor_ml100k_min_ratio_dui_over_fix_epoch", "x", None),
    ("floor_ml10m_ratio_d_over_fix", "x", None),
    ("floor_ml10m_min_ratio_d_over_fix", "x", None),
    ("floor_ml10m_ratio_dui_over_fix", "x", None),
    ("floor_ml10m_min_ratio_dui_over_fix", "x", None),
    ("floor_ml10m_ratio_dui_adam_over_fix", "x", None),
    ("floor_ml10m_min_ratio_dui_adam_over_fix", "x", None),
    ("peak_rss_mb_ml10m_dui_run", "MB", 3000.0),
)
#: How a TABLE unit shows a value stored in seconds or as a fraction (others: as stored)
UNIT_SCALE = {"ms": 1e3, "%": 100.0}
#: Shapes whose results are checked against the targets (the tiny shape only checks the script).
TARGET_SHAPES = ("ml10m", "ml100k")


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{'key':28s} {'value':>12s} {'target':>10s}"]
    for key, unit, target in TABLE:
        if key not in result:
            continue
        value = result[key]
        scale = UNIT_SCALE.get(unit, 1.0)
        shown = f"{value * scale:10.2f} {unit}"
        at_least = unit == "/s"  # a rate: the target is a minimum
        ok = value >= target if at_least else value <= target if target is not None else True
        checked = result.get("shape", "ml10m") in TARGET_SHAPES and result.get("rss_run_shape", "ml10m") == "ml10m"
        met = "" if target is None or not checked else ("  ok" if ok else "  MISSED")
        goal = "" if target is None else f"{'≥' if at_least else '≤'} {target * scale:g} {unit}"
        lines.append(f"{key:28s} {shown:>12s} {goal:>10s}{met}")
    for key in ("load_avg", "ml100k_load_avg", "study_load_avg", "rss_load_avg"):
        if key in result:
            load = result[key]
            lines.append(f"{key} {load['before'][0]:.2f} → {load['after'][0]:.2f}")
    if "machine" in result:
        lines.append(f"shape {result['shape']}, torch threads {result['torch_threads']}; {result['machine']}")
    return "\n".join(lines)


def _shown(value: float, unit: str) -> str:
    scale = UNIT_SCALE.get(unit, 1.0)
    return f"{value * scale:,.2f} {unit}" if unit != "x" else f"{value:.2f}"


def format_lookahead(compiled: dict[str, Any], eager: dict[str, Any]) -> str:
    """Two ``--lookahead`` records (the kernels compiled, and eager) as one markdown table: the
    Λ-step by the row kernels and over whole tables at each size, and on ml-100k's batches."""
    for record, expected in ((compiled, True), (eager, False)):
        if record.get("lookahead_compiled") is not expected:
            raise ValueError(f"format_lookahead: a record with lookahead_compiled={expected} expected")
    lines = [
        "| table rows per triple | compiled: rows | compiled: whole tables | whole / rows "
        "| eager: rows | eager: whole tables | whole / rows |",
        "|---|---|---|---|---|---|---|",
    ]

    def cells(record: dict[str, Any], i: int | None) -> str:
        if i is None:
            rows, dense = record["lookahead_ml100k_rows_seconds"], record["lookahead_ml100k_dense_seconds"]
        else:
            rows, dense = record["lookahead_rows_seconds"][i], record["lookahead_dense_seconds"][i]
        return f"{rows * 1e3:.2f} ms | {dense * 1e3:.2f} ms | {dense / rows:.2f}"

    for i, per_triple in enumerate(compiled["lookahead_rows_per_triple"]):
        lines.append(f"| {per_triple:g} (uniform ids) | {cells(compiled, i)} | {cells(eager, i)} |")
    if "lookahead_ml100k_rows_seconds" in compiled and "lookahead_ml100k_rows_seconds" in eager:
        per_triple = compiled["lookahead_ml100k_rows_per_triple"]
        lines.append(f"| {per_triple:.2f} (ml100k_dui's batches) | {cells(compiled, None)} | {cells(eager, None)} |")
    key = "lookahead_ml100k_dense_backward_seconds"
    if key in compiled and key in eager:
        ratio = "lookahead_ml100k_ratio_dense_over_dense_backward"
        lines += ["", "| ml100k_dui's batches, whole tables | compiled | eager |", "|---|---|---|"]
        lines.append(
            f"| the Λ-gradient set as computed | {compiled['lookahead_ml100k_dense_seconds'] * 1e3:.2f} ms "
            f"| {eager['lookahead_ml100k_dense_seconds'] * 1e3:.2f} ms |"
        )
        lines.append(
            f"| written by a backward through the loss attached to Λ | {compiled[key] * 1e3:.2f} ms "
            f"| {eager[key] * 1e3:.2f} ms |"
        )
        lines.append(f"| set / backward | {compiled[ratio]:.2f} | {eager[ratio]:.2f} |")
    return "\n".join(lines)


def format_floor_synthetic(record: dict[str, Any], shape: str = "ml10m") -> str:
    """A ``--floor --shape`` record as a markdown table: each part's time, and each λOpt key's
    step ratio to λFix as measured (bare steps), as its floor, and the issue's target."""
    lines = ["| part (bare, medians) | ms |", "|---|---|"]
    for key in ("fix", *FLOOR_ML10M_KEYS):
        lines.append(f"| {key} step | {record[f'floor_{shape}_{key}_step_seconds'] * 1e3:.1f} |")
    lines.append(
        f"| the fused BPR loss's forward and backward on a validation batch | "
        f"{record[f'floor_{shape}_valid_bpr_seconds'] * 1e3:.1f} |"
    )
    lines.append(
        f"| dense LambdaAdam's step over DUI's Λ | {record[f'floor_{shape}_lambda_adam_step_seconds'] * 1e3:.1f} |"
    )
    lines += ["", "| ratio | as measured | floor | target |", "|---|---|---|---|"]
    targets = {key: target for key, _, target in TABLE}
    for method in (key.removeprefix("opt_") for key in FLOOR_ML10M_KEYS):
        target = targets[f"ratio_{method}_over_fix"]
        lines.append(
            f"| `ratio_{method}_over_fix` | {record[f'floor_{shape}_ratio_{method}_over_fix']:.2f} "
            f"| {record[f'floor_{shape}_min_ratio_{method}_over_fix']:.2f} | ≤ {target} |"
        )
    return "\n".join(lines)


def format_floor(record: dict[str, Any]) -> str:
    """A ``--floor`` record as a markdown table: each part's time, and the DUI/λFix ratios as
    measured and as their floor."""
    part = {name: record[f"floor_ml100k_{name}_seconds"] * 1e3 for name in FLOOR_PARTS}
    lines = ["| part (1 thread, medians) | ms |", "|---|---|"]
    lines += [f"| {label} | {part[name]:.2f} |" for name, label in FLOOR_PARTS.items()]
    n = record["floor_ml100k_steps_per_epoch"]
    lines += [
        "",
        "| DUI / λFix | as measured | floor (λFix + the validation BPR + the Λ step) |",
        "|---|---|---|",
        f"| step | {record['floor_ml100k_ratio_dui_over_fix_step']:.2f} "
        f"| {record['floor_ml100k_min_ratio_dui_over_fix_step']:.2f} |",
        f"| epoch ({n} steps and one evaluation) | {record['floor_ml100k_ratio_dui_over_fix_epoch']:.2f} "
        f"| {record['floor_ml100k_min_ratio_dui_over_fix_epoch']:.2f} |",
    ]
    return "\n".join(lines)


def format_comparison(before: dict[str, Any], after: dict[str, Any]) -> str:
    """A markdown table of the :data:`TABLE` keys that both records hold: key | before | after |
    target, each record's column headed by its code commit; a ratio or a fraction that misses
    its target is bold."""
    commit = next((k for k in ("ml100k_code_commit", "code_commit") if k in after), None)

    def head(record: dict[str, Any], name: str) -> str:
        return f"{name} ({str(record.get(commit, '?'))[:7]})" if commit else name

    lines = [f"| key | {head(before, 'before')} | {head(after, 'after')} | target |", "|---|---|---|---|"]
    for key, unit, target in TABLE:
        if key not in before or key not in after:
            continue
        cells = []
        for record in (before, after):
            shown = _shown(record[key], unit)
            missed = target is not None and unit in ("x", "%") and record[key] > target
            cells.append(f"**{shown}**" if missed else shown)
        goal = "" if target is None else f"≤ {_shown(target, unit)}" if unit != "/s" else f"≥ {_shown(target, unit)}"
        lines.append(f"| `{key}` | {cells[0]} | {cells[1]} | {goal} |")
    for key in ("load_avg", "ml100k_load_avg"):
        if key in before and key in after:
            loads = [f"{r[key]['before'][0]:.2f} → {r[key]['after'][0]:.2f}" for r in (before, after)]
            lines.append(f"| {key} (1 min, start → end) | {loads[0]} | {loads[1]} | |")
    return "\n".join(lines)


#: ``--gather``: the batch and the tables' rows per user gather that it times
GATHER_BATCH = 1024
GATHER_ROWS_PER_GATHER = (1, 2, 4, 8, 16, 32, 64)
#: ``--gather``'s routes: the forward's row-sparse gather under autograd, and the fused training
#: loss (``MatrixFactorization.bpr_loss``)
GATHER_ROUTES = ("sparse", "fused")


def run_gather(threads: int | None, rounds: int = 5, steps: int = 40) -> dict[str, Any]:
    """Forward + backward of one batch's BPR loss by ``MatrixFactorization``'s forward under
    autograd and by its fused training loss, per table size (the module docstring, ``--gather``)."""
    import torch

    from lopt.models.mf import MatrixFactorization, bpr_loss
    from lopt.models.rows import batch_rows

    if threads is not None:
        torch.set_num_threads(threads)
    load_before = os.getloadavg()
    gen = torch.Generator().manual_seed(0)
    times: dict[tuple[int, str], list[float]] = {}
    for _ in range(rounds):
        for per_gather in GATHER_ROWS_PER_GATHER:
            n_rows = per_gather * GATHER_BATCH
            for route in GATHER_ROUTES:
                torch.manual_seed(0)
                model = MatrixFactorization(n_rows, n_rows, 64, init_std=0.1)
                for step in range(steps):
                    users, pos, neg = (torch.randint(0, n_rows, (GATHER_BATCH,), generator=gen) for _ in range(3))
                    started = time.thread_time()
                    model.zero_grad(set_to_none=True)
                    rows = batch_rows((users, pos, neg), n_rows, n_rows).triples
                    if route == "fused":
                        model.bpr_loss(users, pos, neg, rows).backward()
                    else:
                        bpr_loss(*model(users, pos, neg, rows)).backward()
                    if step >= 5:  # the first steps allocate the buffers
                        times.setdefault((per_gather, route), []).append(time.thread_time() - started)
    out: dict[str, Any] = {
        "gather_batch": GATHER_BATCH,
        "gather_rows_per_gather": list(GATHER_ROWS_PER_GATHER),
    }
    for route in GATHER_ROUTES:
        out[f"gather_{route}_seconds"] = [statistics.median(times[r, route]) for r in GATHER_ROWS_PER_GATHER]
    out["gather_ratio_fused_over_sparse"] = [
        a / b for a, b in zip(out["gather_fused_seconds"], out["gather_sparse_seconds"], strict=True)
    ]
    for i, per_gather in enumerate(GATHER_ROWS_PER_GATHER):
        sparse, fused = (out[f"gather_{route}_seconds"][i] * 1e3 for route in GATHER_ROUTES)
        print(
            f"  rows {per_gather:3d} x batch: autograd row-sparse {sparse:.3f} ms, fused {fused:.3f} ms,"
            f" fused/row-sparse {fused / sparse:.2f}",
            file=sys.stderr,
        )
    out.update({f"gather_{key}": value for key, value in _finish(load_before, "cpu").items()})
    return out


#: ``--lookahead``: the train (and validation) batch and the tables' rows per triple that it times
LOOKAHEAD_BATCH = 1024
LOOKAHEAD_ROWS_PER_TRIPLE = (0.5, 1.0, 2.0, 4.0, 8.0)
#: ``--lookahead``'s routes: the row kernels (``lopt.lookahead.fused``) and the whole tables
LOOKAHEAD_ROUTES = ("rows", "dense")
#: on ml-100k's batches also: the whole tables with the Λ-gradient written by a backward through the
#: loss attached to Λ (autograd's route) instead of set as computed
LOOKAHEAD_ML100K_ROUTES = (*LOOKAHEAD_ROUTES, "dense_backward")


def _lookahead_route(route: str) -> Any:
    """A context in which the Λ-step takes ``route`` of :data:`LOOKAHEAD_ML100K_ROUTES` whatever the
    tables' size: "dense" lifts :func:`lopt.lookahead.dense.max_rows_per_triple`, "rows" turns it
    off, "dense_backward" lifts it and hands ``lambda_step`` the whole-table result attached to Λ
    (its backward, then the clip and the step)."""
    import contextlib
    from unittest import mock

    from lopt.lookahead import dense, steps

    if route == "rows":
        return mock.patch.object(dense, "applies", return_value=False)
    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(dense, "max_rows_per_triple", return_value=math.inf))
    if route == "dense_backward":
        real = steps.lookahead

        def attached(model: Any, theta: Any, granularity: Any, *args: Any, **kwargs: Any) -> Any:
            result = real(model, theta, granularity, *args, **kwargs)
            return result.attach(granularity) if isinstance(result, dense.DenseLookahead) else result

        stack.enter_context(mock.patch.object(steps, "lookahead", attached))
    return stack


def run_lookahead(
    threads: int | None,
    rounds: int = 5,
    steps: int = 25,
    dim: int = 128,
    compiled: bool = True,
    data: Path | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """The λOpt-DUI Λ-step by the row kernels and over whole tables, per table size (the module
    docstring, ``--lookahead``; ``compiled``: the look-ahead kernels through torch.compile); with
    ``data`` (ml-100k's u.data) also on its real batches (:func:`lookahead_ml100k`)."""

    import torch

    from lopt.lookahead.steps import lambda_step, train_loss
    from lopt.models.granularity import LambdaGranularity
    from lopt.models.mf import MatrixFactorization
    from lopt.models.rows import batch_rows
    from lopt.optim.lambda_optimizers import LambdaAdam

    if threads is not None:
        torch.set_num_threads(threads)
    load_before = os.getloadavg()
    gen = torch.Generator().manual_seed(0)
    times: dict[tuple[float, str], list[float]] = {}
    for _ in range(rounds):
        for per_triple in LOOKAHEAD_ROWS_PER_TRIPLE:
            n_rows = max(1, round(per_triple * LOOKAHEAD_BATCH))  # each table: |U| + |I| = k·(|B| + |V|)
            for route in LOOKAHEAD_ROUTES:
                torch.manual_seed(0)
                model = MatrixFactorization(n_rows, n_rows, dim, init_std=0.1)
                granularity = LambdaGranularity("dui", n_rows, n_rows, dim, init=1e-3)
                theta = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
                lam = LambdaAdam(list(granularity.parameters()), lr=1e-3, amsgrad=True)
                with _lookahead_route(route):
                    for step in range(steps):
                        train, valid = (
                            tuple(torch.randint(0, n_rows, (LOOKAHEAD_BATCH,), generator=gen) for _ in range(3))
                            for _ in range(2)
                        )
                        theta.zero_grad(set_to_none=True)
                        rows = batch_rows(train, n_rows, n_rows)
                        train_loss(model, train, rows).backward()
                        started = time.thread_time()
                        lambda_step(
                            model,
                            theta,
                            lam,
                            granularity,
                            train,
                            valid,
                            scope="batch",
                            scale=1.0,
                            clip_norm=100.0,
                            lambda_clip_norm=100.0,
                            dropout=0.0,
                            compiled=compiled,
                            rows=rows,
                        )
                        if step >= 5:  # the first steps compile and allocate
                            times.setdefault((per_triple, route), []).append(time.thread_time() - started)
                        theta.step()
    out: dict[str, Any] = {
        "lookahead_batch": LOOKAHEAD_BATCH,
        "lookahead_dim": dim,
        "lookahead_compiled": compiled,
        "lookahead_rows_per_triple": list(LOOKAHEAD_ROWS_PER_TRIPLE),
    }
    for route in LOOKAHEAD_ROUTES:
        out[f"lookahead_{route}_seconds"] = [statistics.median(times[k, route]) for k in LOOKAHEAD_ROWS_PER_TRIPLE]
    out["lookahead_ratio_dense_over_rows"] = [
        a / b for a, b in zip(out["lookahead_dense_seconds"], out["lookahead_rows_seconds"], strict=True)
    ]
    for i, per_triple in enumerate(LOOKAHEAD_ROWS_PER_TRIPLE):
        rows_ms, dense_ms = (out[f"lookahead_{route}_seconds"][i] * 1e3 for route in LOOKAHEAD_ROUTES)
        print(
            f"  {per_triple:g} rows per triple: row kernels {rows_ms:.3f} ms, whole tables {dense_ms:.3f} ms,"
            f" whole/rows {dense_ms / rows_ms:.2f}",
            file=sys.stderr,
        )
    if data is not None:
        out.update(lookahead_ml100k(data, cache_dir or REPO_ROOT / "data" / "bench", compiled, rounds))
    out.update({f"lookahead_{key}": value for key, value in _finish(load_before, "cpu").items()})
    return out


def lookahead_ml100k(data: Path, cache_dir: Path, compiled: bool, rounds: int) -> dict[str, Any]:
    """``ml100k_dui``'s Λ-step (its module, optimizers and real batches) by the row kernels and over
    whole tables, the two alternating step by step in one process (both compute the same update, so
    they follow one trajectory); thread CPU time, medians."""

    from lopt.lookahead.steps import lambda_step, theta_step, train_loss
    from lopt.models.rows import batch_rows
    from lopt.pipeline import prepare_data

    _, common = _scratch_run_overrides(data, cache_dir, "lopt-bench-lookahead-")
    cfg = _compose("ml100k_dui", [*common, f"model.compile_lookahead={compiled}"])
    datamodule, split, _ = prepare_data(cfg)
    module, theta, lam = _bare_module(cfg, split)
    model, granularity = module.model, module.granularity
    options = {"scope": module.penalty_scope, "scale": module.penalty_scale, "clip_norm": module.grad_clip_norm}
    times: dict[str, list[float]] = {route: [] for route in LOOKAHEAD_ML100K_ROUTES}
    batches = list(datamodule.train_dataloader())
    for round_ in range(rounds + 1):  # round 0 warms up (compiles)
        for i, batch in enumerate(batches):
            route = LOOKAHEAD_ML100K_ROUTES[(i + round_) % len(LOOKAHEAD_ML100K_ROUTES)]
            theta.zero_grad(set_to_none=True)
            rows = batch_rows(batch["train"], split.n_users, split.n_items)
            train_loss(model, batch["train"], rows).backward()
            with _lookahead_route(route):
                started = time.thread_time()
                lambda_step(
                    model,
                    theta,
                    lam,
                    granularity,
                    batch["train"],
                    batch["valid"],
                    lambda_clip_norm=module.lambda_grad_clip_norm,
                    dropout=0.0,
                    compiled=compiled,
                    rows=rows,
                    **options,
                )
                if round_ > 0:
                    times[route].append(time.thread_time() - started)
            theta_step(model, theta, granularity, batch["train"], rows=rows, **options)
    per_triple = (split.n_users + split.n_items) / (cfg.data.batch_size + cfg.data.valid_batch_size)
    out: dict[str, Any] = {"lookahead_ml100k_rows_per_triple": per_triple}
    for route in LOOKAHEAD_ML100K_ROUTES:
        out[f"lookahead_ml100k_{route}_seconds"] = statistics.median(times[route])
        out[f"lookahead_ml100k_{route}_steps_timed"] = len(times[route])
    out["lookahead_ml100k_ratio_dense_over_rows"] = (
        out["lookahead_ml100k_dense_seconds"] / out["lookahead_ml100k_rows_seconds"]
    )
    out["lookahead_ml100k_ratio_dense_over_dense_backward"] = (
        out["lookahead_ml100k_dense_seconds"] / out["lookahead_ml100k_dense_backward_seconds"]
    )
    print(
        f"  ml100k_dui's real batches ({out['lookahead_ml100k_rows_per_triple']:.2f} rows per triple): row kernels "
        f"{out['lookahead_ml100k_rows_seconds'] * 1e3:.3f} ms, whole tables "
        f"{out['lookahead_ml100k_dense_seconds'] * 1e3:.3f} ms, whole/rows "
        f"{out['lookahead_ml100k_ratio_dense_over_rows']:.2f}; whole tables after a backward "
        f"{out['lookahead_ml100k_dense_backward_seconds'] * 1e3:.3f} ms",
        file=sys.stderr,
    )
    return out


class _PartTimer:
    """Times named parts with ``clock`` (called as ``timer(name, fn)``); medians per part."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.times: dict[str, list[float]] = {}

    def __call__(self, name: str, fn: Any) -> None:
        started = self.clock()
        fn()
        self.times.setdefault(name, []).append(self.clock() - started)

    def medians(self) -> dict[str, float]:
        return {name: statistics.median(values) for name, values in self.times.items()}


def _valid_bpr_part(model: Any) -> Any:
    """A function of a batch: the fused BPR loss's forward and backward on its validation triples,
    on a copy of ``model`` (the model itself is left alone)."""
    twin = copy.deepcopy(model)

    def part(batch: dict[str, Any]) -> None:
        twin.zero_grad(set_to_none=True)
        twin.bpr_loss(*batch["valid"], None).backward()

    return part


def _lambda_step_part(module: Any) -> Any:
    """A function: ``module``'s Λ optimizer's step on a copy of its learnable Λ holding a fixed
    dense gradient (the gradient's values do not change the step's cost)."""
    import torch

    lam = [torch.nn.Parameter(p.detach().clone()) for p in module.granularity.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(0)
    for p in lam:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype) * 1e-3
    return module.make_lambda_optimizer(lam).step


#: ``--floor``'s timed parts (keys ``floor_ml100k_<part>_seconds``) and how its table names them
FLOOR_PARTS = {
    "fix_step": "λFix step, bare",
    "dui_step": "λOpt-DUI step, bare",
    "valid_bpr": "the fused BPR loss's forward and backward on a validation batch",
    "lambda_step": "the Λ optimizer's step on DUI's Λ (dense gradient)",
    "eval": "a bare evaluation (valid users against every item, top-100)",
}


def run_floor(data: Path, cache_dir: Path, rounds: int = 3) -> dict[str, Any]:
    """``--floor``: a lower bound on ``ml100k_ratio_dui_over_fix_epoch`` from what any exact
    λOpt-DUI Λ-step must do beyond a λFix step, timed in one process at 1 thread, interleaved over
    ``ml100k_fix``'s and ``ml100k_dui``'s own modules, optimizers and batches (thread CPU time,
    medians after a warm-up round): score a validation batch forward and backward (the fused BPR
    loss on it, ``floor_ml100k_valid_bpr_seconds``) and step Λ with the configured optimizer
    (``floor_ml100k_lambda_step_seconds``, its step on a dense Λ-gradient). Beside them the bare
    λFix and λOpt-DUI steps (``lopt.lookahead.steps``, no Lightning) and a bare evaluation; an epoch
    is ``steps_per_epoch`` steps plus one evaluation."""
    import torch

    from lopt.pipeline import prepare_data

    torch.set_num_threads(1)
    load_before = os.getloadavg()
    _, common = _scratch_run_overrides(data, cache_dir, "lopt-bench-floor-")
    built = {}
    for key in ("fix", "dui"):
        cfg = _compose(f"ml100k_{key}", common)
        datamodule, split, evaluators = prepare_data(cfg)
        built[key] = (*_bare_module(cfg, split), list(datamodule.train_dataloader()), evaluators["valid"].users)
    dui, dui_theta, dui_lam, batches, valid_users = built["dui"]
    valid_bpr, lambda_step = _valid_bpr_part(dui.model), _lambda_step_part(dui)
    timer = _PartTimer(time.thread_time)
    fix, fix_theta, _, fix_batches, _ = built["fix"]
    for round_ in range(rounds + 1):  # round 0 warms up (compiles)
        if round_ == 1:
            timer.times.clear()
        for fix_batch, batch in zip(fix_batches, batches, strict=False):
            timer("fix_step", functools.partial(_bare_step, fix, fix_theta, None, fix_batch))
            timer("dui_step", functools.partial(_bare_step, dui, dui_theta, dui_lam, batch))
            timer("valid_bpr", functools.partial(valid_bpr, batch))
            timer("lambda_step", lambda_step)
        P, Q = fix.model.user_factors, fix.model.item_factors
        timer("eval", functools.partial(bare_eval_seconds, P, Q, valid_users, repeats=1))
    out: dict[str, Any] = {f"floor_ml100k_{name}_seconds": value for name, value in timer.medians().items()}
    n = len(batches)
    out["floor_ml100k_steps_per_epoch"] = n
    fix_s, dui_s, eval_s = (out[f"floor_ml100k_{name}_seconds"] for name in ("fix_step", "dui_step", "eval"))
    extra = out["floor_ml100k_valid_bpr_seconds"] + out["floor_ml100k_lambda_step_seconds"]
    out["floor_ml100k_ratio_dui_over_fix_step"] = dui_s / fix_s
    out["floor_ml100k_min_ratio_dui_over_fix_step"] = (fix_s + extra) / fix_s
    out["floor_ml100k_ratio_dui_over_fix_epoch"] = (n * dui_s + eval_s) / (n * fix_s + eval_s)
    out["floor_ml100k_min_ratio_dui_over_fix_epoch"] = (n * (fix_s + extra) + eval_s) / (n * fix_s + eval_s)
    print(
        f"  λFix step {fix_s * 1e3:.3f} ms, DUI step {dui_s * 1e3:.3f} ms, validation BPR "
        f"{out['floor_ml100k_valid_bpr_seconds'] * 1e3:.3f} ms, "
        f"Λ optimizer step {out['floor_ml100k_lambda_step_seconds'] * 1e3:.3f} ms, evaluation {eval_s * 1e3:.3f} ms; "
        f"DUI/λFix epoch {out['floor_ml100k_ratio_dui_over_fix_epoch']:.2f}, its floor "
        f"{out['floor_ml100k_min_ratio_dui_over_fix_epoch']:.2f}",
        file=sys.stderr,
    )
    out.update({f"floor_{key}": value for key, value in _finish(load_before, "cpu").items()})
    return out


#: ``--floor --shape ml10m``: the bench's λOpt keys whose step ratio to λFix the issue targets
FLOOR_ML10M_KEYS = ("opt_d", "opt_dui", "opt_dui_adam")


def run_floor_synthetic(
    cache_dir: Path, threads: int | None, rounds: int = 3, steps: int = 15, shape: str = "ml10m", batch: int = 10_240
) -> dict[str, Any]:
    """``--floor --shape ml10m``: the same lower bound for the ML-10M step ratios (``ratio_d_over_fix``,
    ``ratio_dui_over_fix``, ``ratio_dui_adam_over_fix``) on the bench's synthetic ML-10M file, its
    batches of 10,240 and its pinned Λ optimizers (:data:`LAMBDA_OPTIMIZERS`), wall time (the
    ratios' thread count), the parts interleaved step by step in one process: the bare λFix and λOpt
    steps on the same batches, the fused BPR loss's forward and backward on a validation batch
    (every λOpt step's), and dense LambdaAdam's step over DUI's per-entry Λ (``opt_dui_adam``'s;
    D's one Λ vector and LambdaSGD's row update are left out, so their floors are lower bounds)."""
    import torch
    from omegaconf import OmegaConf

    from lopt.data.preprocess import prepare_split
    from lopt.data.readers import read_movielens_dat, read_movielens_tab
    from lopt.pipeline import prepare_data

    if threads is not None:
        torch.set_num_threads(threads)
    load_before = os.getloadavg()
    path = ensure_file(cache_dir, shape)
    _, common = _scratch_run_overrides(path, cache_dir, "lopt-bench-floor-", batch)
    cfgs = {key: method_config(key, common) for key in ("fix", *FLOOR_ML10M_KEYS)}
    preprocess = OmegaConf.to_container(cfgs["fix"].dataset.preprocess, resolve=True)
    reader = read_movielens_tab if path.suffix == ".data" else read_movielens_dat
    split = prepare_split(reader(path), **preprocess)
    datamodule, _, _ = prepare_data(cfgs["opt_dui"], split=split)
    loader = iter(datamodule.train_dataloader())
    batches = [next(loader) for _ in range(steps)]
    modules = {key: _bare_module(cfg, split) for key, cfg in cfgs.items()}
    valid_bpr = _valid_bpr_part(modules["opt_dui_adam"][0].model)
    lambda_adam = _lambda_step_part(modules["opt_dui_adam"][0])
    timer = _PartTimer(time.perf_counter)
    for round_ in range(rounds + 1):  # round 0 warms up (compiles)
        if round_ == 1:
            timer.times.clear()
        for item in batches:
            for key, (module, theta, lam) in modules.items():
                timer(f"{key}_step", functools.partial(_bare_step, module, theta, lam, item))
            timer("valid_bpr", functools.partial(valid_bpr, item))
            timer("lambda_adam_step", lambda_adam)
    out: dict[str, Any] = {f"floor_{shape}_{name}_seconds": value for name, value in timer.medians().items()}
    fix_s, bpr_s = out[f"floor_{shape}_fix_step_seconds"], out[f"floor_{shape}_valid_bpr_seconds"]
    for key in FLOOR_ML10M_KEYS:
        method = key.removeprefix("opt_")
        least = fix_s + bpr_s + (out[f"floor_{shape}_lambda_adam_step_seconds"] if key == "opt_dui_adam" else 0.0)
        out[f"floor_{shape}_ratio_{method}_over_fix"] = out[f"floor_{shape}_{key}_step_seconds"] / fix_s
        out[f"floor_{shape}_min_ratio_{method}_over_fix"] = least / fix_s
    out[f"floor_{shape}_threads"] = torch.get_num_threads()
    floors = ", ".join(f"{m}: {out[f'floor_{shape}_min_ratio_{m}_over_fix']:.2f}" for m in ("d", "dui", "dui_adam"))
    parts = ", ".join(f"{name} {value * 1e3:.1f} ms" for name, value in timer.medians().items())
    print(f"  {parts}; floors {floors}", file=sys.stderr)
    out.update({f"floor_{shape}_{key}": value for key, value in _finish(load_before, "cpu").items()})
    return out


def exit_on_sigterm() -> None:
    """Make SIGTERM exit through ``sys.exit`` (status 143), so that the ``atexit`` handlers that
    remove the bench's scratch folders run when a long mode is stopped with ``kill``."""
    import signal

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted([*SHAPES, "ml100k"]), default="ml10m")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench.json"),
        help="the JSON written (an existing file's other keys are kept: the modes add theirs)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=REPO_ROOT / "data" / "bench",
        help="where the synthetic ratings file is generated once (never committed)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    parser.add_argument(
        "--ratings",
        type=Path,
        default=None,
        help="time a real MovieLens ratings file (u.data or ::) instead of synthetic data; "
        "uses --shape's schedule (e.g. --shape ml1m --ratings /path/to/ml-100k/u.data)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="the ml-100k ratings file (u.data) of --shape ml100k and --study",
    )
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the shape's)")
    parser.add_argument(
        "--compile-lookahead",
        choices=("config", "on", "off"),
        default="config",
        help="λOpt look-ahead kernels: as the experiment configs set it (default), or forced on/off",
    )
    parser.add_argument(
        "--ml100k-schedule",
        type=int,
        nargs=3,
        default=list(ML100K_SCHEDULE),
        metavar=("WARMUP", "ROUNDS", "EPOCHS"),
        help=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--study",
        action="store_true",
        help="time the 20-trial λFix and λOpt-DUI studies on --data (ml100k_study_seconds); long",
    )
    parser.add_argument(
        "--study-before",
        type=Path,
        default=None,
        help="a checkout of the baseline commit (e.g. a git worktree): its studies too (ml100k_study_seconds_before)",
    )
    parser.add_argument(
        "--study-shared",
        action="store_true",
        help="also time the studies with the trials sharing processes (ml100k_study_seconds_shared)",
    )
    parser.add_argument("--study-trials", type=int, default=20, help="trials per study (default 20)")
    parser.add_argument(
        "--study-subset",
        type=int,
        default=None,
        help="time only this many of each study's fixed configurations, spread over the list (default: all)",
    )
    parser.add_argument(
        "--study-part",
        type=_part,
        default=None,
        metavar="K/N",
        help="time only the K-th of N equal, contiguous parts of each study's list (whole batches; "
        "--combine-studies sums the parts), for studies longer than one sitting",
    )
    parser.add_argument("--study-epochs", type=int, default=80, help="the equal budget's max epochs (default 80)")
    parser.add_argument(
        "--study-methods",
        nargs="+",
        choices=list(STUDY_SWEEPS),
        default=list(STUDY_SWEEPS),
        help="which studies to time (default: all); the totals sum these only",
    )
    parser.add_argument(
        "--rss",
        action="store_true",
        help="peak RSS of one ml10m_dui run on --shape's synthetic file, alone (peak_rss_mb_ml10m_dui_run)",
    )
    parser.add_argument("--rss-epochs", type=int, default=3, help="epochs of the --rss run (default 3)")
    parser.add_argument(
        "--startup-imports",
        type=Path,
        default=None,
        metavar="DIR",
        help="the modules outside lopt that a run of this checkout or of DIR (a baseline checkout) "
        "alone imports by its first training step (startup_modules_*)",
    )
    parser.add_argument(
        "--gather",
        action="store_true",
        help="the fused training loss against the forward under autograd, by table size (gather_*); seconds",
    )
    parser.add_argument(
        "--lookahead",
        action="store_true",
        help="the λOpt-DUI Λ-step by the row kernels and over whole tables, by table size (lookahead_*); seconds",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="a lower bound on ml100k_ratio_dui_over_fix_epoch (with --data), or without --data on the "
        "--shape's λOpt/λFix step ratios, from the work any exact Λ-step adds (floor_*)",
    )
    parser.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("BEFORE", "AFTER"),
        help="print two records' shared keys as a markdown table (before | after | target) and exit; "
        "two --lookahead records (compiled, eager): their routes side by side",
    )
    parser.add_argument(
        "--combine-studies",
        nargs="+",
        type=Path,
        metavar="RECORD",
        help="write to --out one study record from --study records of disjoint --study-methods, and exit",
    )
    parser.add_argument("--generate", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    exit_on_sigterm()
    # the code the timed runs start from (commits made into the checkout while a long mode runs
    # must not relabel it)
    commit = code_commit(REPO_ROOT)
    if args.compare is not None:
        before, after = (json.loads(path.read_text(encoding="utf-8")) for path in args.compare)
        lookahead = "lookahead_compiled" in before and "lookahead_compiled" in after
        print(format_lookahead(before, after) if lookahead else format_comparison(before, after))
        return 0
    if args.combine_studies is not None:
        from lopt.io import atomic_write_json

        combined = combine_studies([json.loads(path.read_text(encoding="utf-8")) for path in args.combine_studies])
        atomic_write_json(args.out, combined)
        print(format_table(combined))
        print(f"wrote {args.out}")
        return 0
    if args.generate is not None:
        generate_file(args.generate, args.shape)
        return 0
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is available")
    if (args.study or args.shape == "ml100k") and args.data is None:
        parser.error("--shape ml100k and --study need --data (the ml-100k u.data file)")
    if args.data is not None and not args.data.is_file():
        parser.error(f"--data {args.data}: no such file")
    cache_dir = args.cache_dir.expanduser().resolve()
    if args.study:
        result = run_study(
            args.data.resolve(),
            args.study_before,
            args.study_trials,
            args.study_epochs,
            args.study_shared,
            args.study_subset,
            tuple(args.study_methods),
            args.study_part,
        )
    elif args.rss:
        result = run_rss(cache_dir, args.shape, args.rss_epochs)
    elif args.startup_imports is not None:
        result = run_startup_imports(args.startup_imports)
    elif args.gather:
        result = run_gather(args.threads)
    elif args.floor and args.data is None:
        result = run_floor_synthetic(cache_dir, args.threads, shape=args.shape)
    elif args.floor:
        result = run_floor(args.data.resolve(), cache_dir)
    elif args.lookahead:  # compiled as the λOpt experiments set it, unless --compile-lookahead off
        result = run_lookahead(
            args.threads,
            compiled=args.compile_lookahead != "off",
            data=args.data and args.data.resolve(),
            cache_dir=cache_dir,
        )
    elif args.shape == "ml100k":
        if args.device != "cpu":
            parser.error("--shape ml100k times the CPU (its 1-thread small-data loop)")
        result = run_ml100k(args.data.resolve(), cache_dir, args.threads, tuple(args.ml100k_schedule))
    else:
        compile_lookahead = {"config": None, "on": True, "off": False}[args.compile_lookahead]
        result = run(
            args.shape,
            args.device,
            cache_dir,
            args.threads,
            ratings=args.ratings,
            batch=args.batch,
            compile_lookahead=compile_lookahead,
        )
    prefix = (
        "ml100k_study_"
        if args.study
        else "rss_"
        if args.rss
        else "startup_imports_"
        if args.startup_imports is not None
        else "gather_"
        if args.gather
        else "lookahead_"
        if args.lookahead
        else "floor_"
        if args.floor
        else "ml100k_"
        if args.shape == "ml100k"
        else ""
    )
    result[f"{prefix}code_commit"] = commit

    from lopt.io import atomic_write_json

    merged = json.loads(args.out.read_text()) if args.out.is_file() else {}
    merged.update(result)
    atomic_write_json(args.out, merged)
    if args.floor:
        print(format_floor(result) if args.data is not None else format_floor_synthetic(result, args.shape))
    elif args.startup_imports is not None:
        print(format_startup_imports(result))
    else:
        print(format_table(result))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
