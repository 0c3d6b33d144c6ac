"""The training progress bar: step count, loss, rate and ETA, on stderr."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainingProgress:
    """Steps out of `total`; or, under a time budget (`budget_s`), the share of the budget spent and the step."""

    def __init__(self, total: int | None, start: int = 0, enabled: bool = True, description: str = "train",
                 budget_s: float | None = None) -> None:
        self.enabled = enabled
        self.budget_s = budget_s
        counter = TextColumn("step {task.fields[step]}") if budget_s else MofNCompleteColumn()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            counter,
            TaskProgressColumn(),
            TextColumn("{task.fields[status]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not enabled,
            transient=False,
        )
        self._task = self._progress.add_task(description, total=budget_s or total, completed=0 if budget_s else start,
                                             status="", rate="", step=start)

    def __enter__(self) -> TrainingProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, step: int, status: str, rate: float, elapsed_s: float = 0.0) -> None:
        completed = min(elapsed_s, self.budget_s) if self.budget_s else step
        self._progress.update(self._task, completed=completed, status=status, rate=f"{rate:.2f} step/s", step=step)

    def log(self, message: str) -> None:
        if self.enabled:
            self._progress.console.print(message)
