"""Top-K recommendations out of a finished run.

    python -m lopt.recommend RUN_DIR --k 20 [--users FILE] [--out FILE] [--data-dir DIR] [--allow-unfinished]

Loads the run's composed config (``RUN_DIR/.hydra/config.yaml``), its prepared split (from the
split cache, or rebuilt from the dataset) and the best checkpoint (``checkpoints/best.ckpt``),
scores every user — or the raw user ids listed in FILE, one per line — against all items in
blocks, removes the items the user interacted with in train ∪ valid (held-out test items stay:
they are what the model should find), and writes ``recommendations.parquet`` (default in
RUN_DIR) with columns ``raw_user_id``, ``rank`` (1..K), ``raw_item_id``, ``score``: K rows per
user (fewer only when a user has fewer than K items left), users in the file's order (else
ascending index), ranks by descending score.

A run directory is data: the config's ``_target_``s must be lopt's own classes, torch's
optimizers or Lightning's trainer, callbacks and loggers (``lopt.run.validate.check_targets``), and
the checkpoint is loaded weights-only. A run without ``metrics.json`` (interrupted, or still
training) is refused unless ``--allow-unfinished``, which then names the checkpoint it used.
Every failure ends with one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from lopt.io import atomic_write
from lopt.run.validate import check_recorded_config, check_targets

DEFAULT_BLOCK_USERS = 1024


def load_run_config(run_dir: Path, data_dir: Path | None = None) -> DictConfig:
    """The run's config with the paths Hydra filled at run time set explicitly: ``data_dir``
    (argument, else LOPT_DATA_DIR, else ``<the run's working directory>/data``) and
    ``output_dir`` = ``run_dir``."""
    config_path = run_dir / ".hydra" / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: {run_dir} is not a finished lopt run")
    try:
        cfg = OmegaConf.load(config_path)
    except Exception as err:  # YAML errors, unsupported tags (never constructed)
        raise ValueError(f"{config_path} is not a readable config ({type(err).__name__}: {err})") from None
    check_targets(cfg, config_path)
    check_recorded_config(cfg, config_path)
    if data_dir is None and os.environ.get("LOPT_DATA_DIR"):
        data_dir = Path(os.environ["LOPT_DATA_DIR"])
    if data_dir is None:
        hydra_yaml = run_dir / ".hydra" / "hydra.yaml"
        try:
            cwd = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.cwd") if hydra_yaml.is_file() else None
        except Exception as err:
            raise ValueError(f"{hydra_yaml} is not readable ({type(err).__name__}: {err})") from None
        data_dir = Path(cwd or Path.cwd()) / "data"
    with open_dict(cfg):
        cfg.paths.data_dir = str(data_dir)
        cfg.paths.output_dir = str(run_dir)
    return cfg


def read_user_file(path: Path, user_ids: np.ndarray) -> np.ndarray:
    """Indices of the raw user ids listed in ``path`` (one per line; blank lines skipped).
    ValueError naming the file and line of an id the run does not know."""
    lookup = {str(raw): index for index, raw in enumerate(user_ids.tolist())}
    indices = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        raw = line.strip()
        if not raw:
            continue
        if raw not in lookup:
            raise ValueError(f"{path}:{number}: user {raw!r} is not in the run's data (no interaction of this user)")
        indices.append(lookup[raw])
    if not indices:
        raise ValueError(f"{path} lists no user id")
    return np.asarray(indices, dtype=np.int64)


def recommend(
    module: torch.nn.Module,
    split,  # PreparedSplit
    users: np.ndarray,
    k: int,
    block_users: int = DEFAULT_BLOCK_USERS,
) -> pl.DataFrame:
    """Top-``k`` items of each user index in ``users`` (train ∪ valid items excluded), as the
    recommendations frame (see the module docstring). Vectorized per block of users."""
    from lopt.eval.evaluator import _csr, _gather_rows

    if k < 1:
        raise ValueError(f"--k must be ≥ 1, got {k}")
    seen_indptr, seen_idx = _csr(
        np.concatenate([split.train_users, split.valid_users]),
        np.concatenate([split.train_items, split.valid_items]),
        split.n_users,
    )
    kk = min(k, split.n_items)
    parts_user, parts_item, parts_score, parts_rank = [], [], [], []
    module.eval()
    with torch.no_grad():
        for start in range(0, len(users), block_users):
            block = torch.from_numpy(users[start : start + block_users])
            scores = module.score_users(block).float().cpu()
            allowed = torch.ones_like(scores, dtype=torch.bool)
            allowed[_gather_rows(seen_indptr, seen_idx, block)] = False
            top = torch.topk(scores.masked_fill(~allowed, -torch.inf), kk, dim=1)
            keep = allowed.gather(1, top.indices)  # past a user's last allowed item
            rank = torch.arange(1, kk + 1).expand_as(top.indices)
            parts_user.append(block.unsqueeze(1).expand_as(top.indices)[keep])
            parts_item.append(top.indices[keep])
            parts_score.append(top.values[keep])
            parts_rank.append(rank[keep])
    user = torch.cat(parts_user).numpy()
    item = torch.cat(parts_item).numpy()
    return pl.DataFrame(
        {
            "raw_user_id": split.user_ids[user],
            "rank": torch.cat(parts_rank).numpy().astype(np.int32),
            "raw_item_id": split.item_ids[item],
            "score": torch.cat(parts_score).numpy(),
        }
    )


def run_checkpoint(run_dir: Path, allow_unfinished: bool = False) -> tuple[Path, str | None]:
    """(checkpoint to load, note to print or None): ``checkpoints/best.ckpt`` of a finished run
    (one with ``metrics.json``). An unfinished run is refused (ValueError) unless
    ``allow_unfinished``; the note then says which checkpoint was used and from which step."""
    from lopt.pipeline import BEST_NAME, CHECKPOINT_DIR

    ckpt_path = run_dir / CHECKPOINT_DIR / f"{BEST_NAME}.ckpt"
    if (run_dir / "metrics.json").is_file():
        return ckpt_path, None
    if not allow_unfinished:
        raise ValueError(
            f"{run_dir} is not a finished run (no metrics.json: it was interrupted or is still training), "
            "so its best checkpoint is not the one a finished run would report. Finish it with "
            f"`python run.py resume=true hydra.run.dir={run_dir}`, or pass --allow-unfinished to use "
            "its current best checkpoint"
        )
    return ckpt_path, f"warning: {run_dir} is unfinished; using {ckpt_path}"


def load_best_module(
    cfg: DictConfig, run_dir: Path, n_users: int, n_items: int, ckpt_path: Path | None = None
) -> torch.nn.Module:
    """The run's module with the weights of ``ckpt_path`` (default ``checkpoints/best.ckpt``),
    loaded weights-only."""
    from lopt.pipeline import BEST_NAME, CHECKPOINT_DIR, build_module
    from lopt.run.checkpointing import load_plain

    ckpt_path = ckpt_path or run_dir / CHECKPOINT_DIR / f"{BEST_NAME}.ckpt"
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"{ckpt_path} is missing: the run did not save a best checkpoint")
    checkpoint = load_plain(ckpt_path)
    if "state_dict" not in checkpoint:
        raise ValueError(f"{ckpt_path} holds no model weights (no state_dict)")
    step = checkpoint.get("global_step")
    module = build_module(cfg, n_users, n_items)
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"{ckpt_path} does not fit the run's model: {str(err).splitlines()[0]}") from None
    module.loaded_step = step  # type: ignore[attr-defined]
    return module


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("run_dir", type=Path, help="a finished run's output directory")
    parser.add_argument("--k", type=int, default=20, help="recommendations per user (default 20)")
    parser.add_argument(
        "--users", type=Path, default=None, help="file of raw user ids, one per line (default: every user)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output parquet (default RUN_DIR/recommendations.parquet)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the run's paths.data_dir (default: LOPT_DATA_DIR, else <the run's working dir>/data)",
    )
    parser.add_argument("--block-users", type=int, default=DEFAULT_BLOCK_USERS, help="users scored at once")
    parser.add_argument(
        "--allow-unfinished",
        action="store_true",
        help="use the best checkpoint of a run without metrics.json (interrupted or still training)",
    )
    args = parser.parse_args(argv)
    try:
        from lopt.pipeline import build_datamodule

        cfg = load_run_config(args.run_dir, args.data_dir)
        ckpt_path, note = run_checkpoint(args.run_dir, args.allow_unfinished)
        split = build_datamodule(cfg).load_split()
        users = (
            read_user_file(args.users, split.user_ids)
            if args.users is not None
            else np.arange(split.n_users, dtype=np.int64)
        )
        module = load_best_module(cfg, args.run_dir, split.n_users, split.n_items, ckpt_path)
        if note is not None:
            print(f"{note} (step {getattr(module, 'loaded_step', '?')})", file=sys.stderr)
        frame = recommend(module, split, users, args.k, args.block_users)
        out = args.out or args.run_dir / "recommendations.parquet"
        atomic_write(out, lambda tmp: frame.write_parquet(tmp))
    except Exception as error:  # every failure is one line; a traceback helps no user here
        plain = isinstance(error, (OSError, ValueError, RuntimeError))
        print(f"error: {error}" if plain else f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    print(f"wrote {frame.height} recommendations for {len(users)} users to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
