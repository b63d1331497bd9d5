"""Progress for long runs: a tqdm bar (terminal or notebook), silence, or a function of the caller's own.

Widgets pass a function that moves their own progress bar; the CLI and
notebooks get tqdm.auto.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ProgressCallback = Callable[[int, int | None], None]
Progress = bool | ProgressCallback


class _CallbackBar:
    """The part of tqdm's interface the kit uses, reporting (done, total) to a function."""

    def __init__(self, report: ProgressCallback, total: int | None) -> None:
        self.report, self.total, self.done = report, total, 0
        report(0, total)

    def update(self, n: int) -> None:
        self.done += n
        self.report(self.done, self.total)

    def close(self) -> None:
        pass

    def __enter__(self) -> _CallbackBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _silent(done: int, total: int | None) -> None:
    pass


def progress_bar(progress: Progress, total: int | None, desc: str, unit: str) -> Any:
    """A bar with update(n) and close(), usable as a context manager."""
    if callable(progress):
        return _CallbackBar(progress, total)
    if not progress:
        return _CallbackBar(_silent, total)  # and tqdm.auto, which imports ipywidgets, stays unimported
    import sys

    if "IPython" in sys.modules:  # a notebook (or IPython): tqdm.auto picks the widget bar there
        from tqdm.auto import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm(total=total, unit=unit, desc=desc, disable=not progress, leave=False)
