"""What every panel shares: a title, a status line, errors shown as messages.

Panels hold no logic of their own: each button calls the same public
function a notebook user would call, and shows what it returns.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as w

from .._html import error_html, notice_html
from ..progress import ProgressCallback


class Panel(w.VBox):
    """A VBox with a heading and a status line; ``__repr__`` is its plain-text view outside Jupyter."""

    title = ""

    def __init__(self, body: list[w.Widget], **kwargs: Any) -> None:
        self.status = w.HTML()
        self.error: BaseException | None = None  # the last refusal shown, for code that drives the panel
        super().__init__([w.HTML(f"<h3 style='margin:4px 0'>{self.title}</h3>"), *body, self.status], **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"

    def describe(self) -> str:
        return ""

    def notify(self, text: str) -> None:
        self.error = None
        self.status.value = notice_html(text)

    def fail(self, exc: BaseException) -> None:
        self.error = exc
        self.status.value = error_html(exc)


def guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a panel action; any exception becomes the panel's error message instead of a traceback.

    Button callbacks pass the button; actions take no arguments, so it is dropped.
    """

    @functools.wraps(method)
    def run(self: Panel, *_: Any) -> Any:
        try:
            return method(self)
        except Exception as exc:  # a panel must never leave a raw traceback in the notebook
            self.fail(exc)
            return None

    return run


def path_lines(text: str) -> list[Path]:
    """One path per non-empty line of a text box."""
    return [Path(line.strip()) for line in text.splitlines() if line.strip()]


def button(description: str, action: Callable[..., Any], *, primary: bool = False) -> w.Button:
    b = w.Button(description=description, button_style="primary" if primary else "")
    b.on_click(action)
    return b


def progress_widget() -> w.IntProgress:
    """A bar that stays hidden until the first long run."""
    return w.IntProgress(value=0, min=0, max=1, bar_style="info", layout=w.Layout(visibility="hidden"))


def progress_to(bar: w.IntProgress, label: str) -> ProgressCallback:
    """The ``progress`` function to pass to verify_archive / reproduce so that ``bar`` moves live."""
    bar.description, bar.layout.visibility, bar.value = label[:20], "visible", 0

    def report(done: int, total: int | None) -> None:
        bar.max = max(total or done, 1)
        bar.value = min(done, bar.max)

    return report
