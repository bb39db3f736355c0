"""Progress display: a rich bar per epoch with loss, accuracy and images/s; silent when quiet."""

from __future__ import annotations

from types import TracebackType

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class EpochProgress:
    """``with EpochProgress(epoch, epochs, n_iters) as bar: bar.update(loss=..., ...)``."""

    def __init__(self, epoch: int, epochs: int, n_iters: int, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task = None
        self._label = f"epoch {epoch}/{epochs}"
        self._n_iters = n_iters

    def __enter__(self) -> EpochProgress:
        if self.enabled:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self._label, total=self._n_iters, stats="")
        return self

    def update(self, *, loss: float, acc: float, images_per_s: float) -> None:
        if self._progress is not None and self._task is not None:
            stats = f"loss {loss:.3f} acc {100 * acc:.1f}% {images_per_s:,.0f} img/s"
            self._progress.update(self._task, advance=1, stats=stats)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
