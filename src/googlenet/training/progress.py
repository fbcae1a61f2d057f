"""What a person watching a run sees: a progress bar per epoch and the running statistics behind it.

Kept apart from the data: the batches are a plain iterator, and the loop tells this bar what happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor
from tqdm import tqdm


@dataclass
class EpochStats:
    """Running training loss, accuracy and speed over the batches of one epoch. `add` keeps the new batches'
    sums on their device and `settle` reads them back: on a GPU, reading a value waits for all the work
    queued before it, so the loop settles only every few dozen steps (on the CPU, at every batch)."""

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0  # time in the forward and backward passes, not in reading data
    _pending: list[Tensor] = field(default_factory=list, repr=False)  # [loss sum, correct] not yet read
    _pending_seen: int = 0

    def add(self, loss: Tensor, logits: Tensor, y: Tensor) -> None:
        """One batch's mean loss and logits; its time is added to ``seconds`` by the caller."""
        batch = int(y.numel())
        sums = [loss.detach().double() * batch, (logits.detach().argmax(1) == y).sum()]
        self._pending = sums if not self._pending else [a + b for a, b in zip(self._pending, sums, strict=True)]
        self._pending_seen += batch

    def settle(self) -> None:
        """Fold the batches added since the last settle into the totals (one read from the device)."""
        if self._pending:
            loss_sum, correct = self._pending
            self.loss_sum += float(loss_sum)
            self.correct += int(correct)
            self.seen += self._pending_seen
            self._pending, self._pending_seen = [], 0

    def snapshot(self) -> EpochStats:
        """A settled copy, to subtract from later with `since`."""
        self.settle()
        return EpochStats(self.loss_sum, self.correct, self.seen, self.seconds)

    def since(self, earlier: EpochStats) -> EpochStats:
        """The batches added after ``earlier`` (a snapshot taken then): a window of the epoch."""
        self.settle()
        return EpochStats(
            self.loss_sum - earlier.loss_sum,
            self.correct - earlier.correct,
            self.seen - earlier.seen,
            self.seconds - earlier.seconds,
        )

    def as_dict(self) -> dict[str, float]:
        self.settle()
        return {
            "train_loss": self.loss_sum / max(self.seen, 1),
            "train_top1": self.correct / max(self.seen, 1),
            "img_per_s": self.seen / max(self.seconds, 1e-9),
        }


class EpochBar:
    """A tqdm bar over one epoch's batches; does nothing when disabled (not a terminal, or --no-progress)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None

    def start(self, epoch: int, epochs: int, batches: int, done: int) -> None:
        self.close()
        self._bar = tqdm(
            total=batches,
            initial=done,
            desc=f"epoch {epoch + 1}/{epochs}",
            disable=not self.enabled,
            dynamic_ncols=True,
            leave=False,
        )

    def batch_done(self) -> None:
        self._bar.update(1)

    def show(self, stats: EpochStats, lr: float) -> None:
        s = stats.as_dict()
        self._bar.set_postfix(
            loss=f"{s['train_loss']:.3f}", acc=f"{s['train_top1']:.3f}", img_s=f"{s['img_per_s']:.0f}", lr=f"{lr:.3g}"
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
