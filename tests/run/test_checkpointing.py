"""Checkpoints: atomic writes, a full disk, torn files, weights-only loads."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from lopt.data.cache import cache_path, load_or_build
from lopt.run.checkpointing import (
    AtomicCheckpointIO,
    checkpoint_problem,
    resume_checkpoint,
)
from tests.helpers.faults import tear


def _state(value: float) -> dict:
    return {"state_dict": {"w": torch.full((64, 64), value)}, "global_step": int(value)}


def test_checkpoint_write_hitting_a_full_disk_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    io, target = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint(_state(1.0), target)
    real_save = torch.save

    def half_then_enospc(obj, path):
        real_save(obj, path)
        with open(path, "r+b") as handle:
            handle.truncate(os.path.getsize(path) // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_enospc)
    with pytest.raises(OSError, match=f"no space left on the device while writing {target}"):
        io.save_checkpoint(_state(2.0), target)
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]  # no temp file left
    assert io.load_checkpoint(target)["global_step"] == 1


def test_cache_write_hitting_a_full_disk_names_the_file(tmp_path: Path, monkeypatch) -> None:
    from lopt.data import cache
    from tests.helpers.cache import KEY
    from tests.helpers.cache import small_split as cache_split

    def enospc(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.np, "savez", enospc)
    with pytest.raises(OSError, match=f"no space left .*{cache_path(KEY, tmp_path).name}"):
        load_or_build(KEY, cache_split, tmp_path)
    assert not list(tmp_path.glob("*.npz")) and not list(tmp_path.glob(".*.tmp"))


def test_checkpoints_are_written_beside_their_target(tmp_path: Path, monkeypatch) -> None:
    seen: list[Path] = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, path: (seen.append(Path(path)), real_save(obj, path)))
    AtomicCheckpointIO().save_checkpoint(_state(1.0), tmp_path / "ck" / "best.ckpt")
    assert len(seen) == 1 and seen[0].parent == tmp_path / "ck" and seen[0].name.startswith(".best.ckpt.")


def test_torn_last_checkpoint_falls_back_to_the_newest_intact_one(tmp_path: Path, caplog) -> None:
    io = AtomicCheckpointIO()
    for name, value in (("best.ckpt", 1.0), ("older.ckpt", 0.0), ("last.ckpt", 2.0)):
        io.save_checkpoint(_state(value), tmp_path / name)
    os.utime(tmp_path / "older.ckpt", ns=(1, 1))
    (tmp_path / ".last.ckpt.abc.tmp").write_bytes(b"half")  # a write killed half-way
    tear(tmp_path / "last.ckpt")
    assert checkpoint_problem(tmp_path / "last.ckpt") is not None
    with caplog.at_level("WARNING", logger="lopt"):
        assert resume_checkpoint(tmp_path) == tmp_path / "best.ckpt"
    assert f"{tmp_path / 'last.ckpt'} is corrupt" in caplog.text and "best.ckpt" in caplog.text
    assert (tmp_path / ".last.ckpt.abc.tmp").exists()  # read-only: a resume removes it once it commits


def test_torn_last_checkpoint_without_fallback_says_how_to_start_over(tmp_path: Path) -> None:
    AtomicCheckpointIO().save_checkpoint(_state(2.0), tmp_path / "last.ckpt")
    tear(tmp_path / "last.ckpt")
    with pytest.raises(RuntimeError, match=rf"{tmp_path / 'last.ckpt'} is corrupt .*overwrite=true"):
        resume_checkpoint(tmp_path)


def test_checkpoint_loads_are_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Path("/")}, path)  # an arbitrary pickled object
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)
