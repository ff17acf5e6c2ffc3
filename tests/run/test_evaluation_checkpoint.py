"""EvaluationCheckpoint: best.ckpt by the monitored metric, last.ckpt at every evaluation (a hard
link to best.ckpt when the same evaluation wrote it), nothing at epochs without an evaluation."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import lopt.run.trainer_callbacks as trainer_callbacks
from lopt.run.trainer_callbacks import EvaluationCheckpoint

#: the monitored metric at each evaluation: improves at the 1st, 3rd and 5th
SCORES = [0.5, 0.4, 0.6, 0.6, 0.7, 0.1]


class Scored(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(2))
        self.evaluations = 0

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        return (self.weight * batch[0]).sum()

    def validation_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        pass

    def on_validation_epoch_end(self) -> None:
        self.log("score", SCORES[self.evaluations])
        self.evaluations += 1

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.ones(4, 2)), batch_size=2)


class Spy(L.Callback):
    """(epoch, last's epoch, best's epoch, linked) as each epoch left them: read when the next
    epoch starts and when fit ends (Lightning calls checkpoint callbacks after all others)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.seen = folder, []

    def _look(self, epoch: int) -> None:
        last, best = self.folder / "last.ckpt", self.folder / "best.ckpt"
        epoch_of = lambda p: torch.load(p, weights_only=True)["epoch"] if p.exists() else None  # noqa: E731
        linked = last.exists() and best.exists() and os.stat(last).st_ino == os.stat(best).st_ino
        self.seen.append((epoch, epoch_of(last), epoch_of(best), linked))

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        if trainer.current_epoch > 0:
            self._look(trainer.current_epoch - 1)

    def on_fit_end(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        self._look(trainer.current_epoch - 1)


def _fit(tmp_path: Path, every_n_epochs: int) -> list[tuple]:
    folder = tmp_path / "checkpoints"
    checkpoint = EvaluationCheckpoint(
        dirpath=folder,
        filename="best",
        monitor="score",
        mode="max",
        save_top_k=1,
        save_last=True,
        enable_version_counter=False,
    )
    spy = Spy(folder)
    trainer = L.Trainer(
        max_epochs=len(SCORES) * every_n_epochs,
        callbacks=[checkpoint, spy],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=every_n_epochs,
        default_root_dir=tmp_path,
    )
    trainer.fit(Scored(), _loader(), _loader())
    return spy.seen


def test_last_is_written_at_every_evaluation_and_linked_to_a_best_written_with_it(tmp_path: Path) -> None:
    seen = _fit(tmp_path, every_n_epochs=1)
    # (epoch, last.ckpt's epoch, best.ckpt's epoch, the two names share one file)
    assert seen == [
        (0, 0, 0, True),
        (1, 1, 0, False),
        (2, 2, 2, True),
        (3, 3, 2, False),
        (4, 4, 4, True),
        (5, 5, 4, False),
    ]


def test_epochs_without_an_evaluation_write_nothing(tmp_path: Path) -> None:
    seen = _fit(tmp_path, every_n_epochs=2)
    # the Spy runs at every epoch's end; the checkpoint callback wrote only where the epoch was evaluated
    evaluated = [(epoch, last, best) for epoch, last, best, _ in seen if epoch % 2 == 1]
    skipped = [(epoch, last) for epoch, last, _, _ in seen if epoch % 2 == 0]
    assert evaluated == [(1, 1, 1), (3, 3, 1), (5, 5, 5), (7, 7, 5), (9, 9, 9), (11, 11, 9)]
    assert skipped == [(0, None), (2, 1), (4, 3), (6, 5), (8, 7), (10, 9)]


def test_without_hard_links_last_is_written_as_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(source, path):  # type: ignore[no-untyped-def]
        raise OSError("hard links are not supported here")

    monkeypatch.setattr(trainer_callbacks, "atomic_link", no_links)
    seen = _fit(tmp_path, every_n_epochs=1)
    assert [(epoch, last, best) for epoch, last, best, _ in seen] == [
        (0, 0, 0),
        (1, 1, 0),
        (2, 2, 2),
        (3, 3, 2),
        (4, 4, 4),
        (5, 5, 4),
    ]
    assert not any(linked for *_, linked in seen)


def test_a_replaced_best_leaves_the_linked_last_as_it_was(tmp_path: Path) -> None:
    from lopt.io import atomic_link, atomic_write

    best, last = tmp_path / "best.ckpt", tmp_path / "last.ckpt"
    atomic_write(best, lambda tmp: tmp.write_text("epoch 2"))
    atomic_write(last, lambda tmp: tmp.write_text("epoch 1"))
    atomic_link(best, last)
    assert last.read_text() == "epoch 2" and os.stat(last).st_ino == os.stat(best).st_ino
    atomic_write(best, lambda tmp: tmp.write_text("epoch 4"))
    assert last.read_text() == "epoch 2" and best.read_text() == "epoch 4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]  # no temp left
