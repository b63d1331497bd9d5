"""The flow of one execution as a small SVG picture, with the stages a lesson is about highlighted.

Drawn by code (not a stored image) so that it changes with the kit and every notebook shows the same
picture; the same text for the same arguments, so committed notebook outputs do not churn.
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape
from pathlib import Path

# (key, label) in the order an execution passes them; the picture snakes: five left to right, then back
STAGES = (
    ("request", "request"),
    ("validation", "validation"),
    ("policy", "policy"),
    ("evaluation", "evaluation"),
    ("replay", "replay reservation"),
    ("signing", "signing"),
    ("audit", "audit DB"),
    ("export", "export archive"),
    ("verify", "verify / audit"),
)
_KEYS = tuple(k for k, _ in STAGES)
_W, _H, _GAP, _MARGIN, _PER_ROW = 150, 46, 30, 12, 5
_ON, _OFF, _INK, _FAINT = "#ffd966", "#eef2f7", "#1f2937", "#9aa5b1"


class FlowDiagram:
    """An SVG that Jupyter shows inline (``_repr_svg_``); ``save`` writes it to a file."""

    def __init__(self, svg: str, here: tuple[str, ...]) -> None:
        self.svg, self.here = svg, here

    def _repr_svg_(self) -> str:
        return self.svg

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.svg, encoding="utf-8")
        return path

    def __repr__(self) -> str:
        return _describe(self.here)


def _describe(here: tuple[str, ...]) -> str:
    return f"{' → '.join(label for _, label in STAGES)} (here: {', '.join(here) or 'nothing highlighted'})"


def flow_diagram(here: str | Iterable[str] = (), caption: str = "") -> FlowDiagram:
    """The nine stages, ``here`` (stage keys: request, validation, policy, evaluation, replay, signing, audit,
    export, verify) highlighted, ``caption`` under the picture."""
    chosen = (here,) if isinstance(here, str) else tuple(here)
    unknown = [k for k in chosen if k not in _KEYS]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; the stages are {', '.join(_KEYS)}")
    boxes = [_box(i, key, label, key in chosen) for i, (key, label) in enumerate(STAGES)]
    arrows = [_arrow(i) for i in range(len(STAGES) - 1)]
    width = _MARGIN * 2 + _PER_ROW * _W + (_PER_ROW - 1) * _GAP
    height = _MARGIN * 2 + 2 * _H + _GAP + (26 if caption else 0)
    text = (f'<text x="{width / 2:g}" y="{height - 10}" text-anchor="middle" font-size="13" fill="{_INK}">{escape(caption)}</text>'
            if caption else "")
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'font-family="Helvetica, Arial, sans-serif" role="img" aria-label="{escape(_describe(chosen))}">'
           f'<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto">'
           f'<path d="M0,0 L10,5 L0,10 z" fill="{_FAINT}"/></marker></defs>'
           + "".join(arrows) + "".join(boxes) + text + "</svg>")
    return FlowDiagram(svg, chosen)


def _place(i: int) -> tuple[int, int]:
    """Top-left corner of stage i: row 0 left to right, row 1 right to left."""
    row, col = divmod(i, _PER_ROW)
    if row:
        col = _PER_ROW - 1 - col
    return _MARGIN + col * (_W + _GAP), _MARGIN + row * (_H + _GAP)


def _box(i: int, key: str, label: str, on: bool) -> str:
    x, y = _place(i)
    weight = "bold" if on else "normal"
    return (f'<g data-stage="{key}"><rect x="{x}" y="{y}" width="{_W}" height="{_H}" rx="8" fill="{_ON if on else _OFF}" '
            f'stroke="{_INK if on else _FAINT}" stroke-width="{2 if on else 1}"/>'
            f'<text x="{x + _W / 2:g}" y="{y + _H / 2 + 5:g}" text-anchor="middle" font-size="14" font-weight="{weight}" '
            f'fill="{_INK}">{escape(label)}</text></g>')


def _arrow(i: int) -> str:
    (x1, y1), (x2, y2) = _place(i), _place(i + 1)
    if y1 == y2:  # along a row
        step = 1 if x2 > x1 else -1
        sx = x1 + (_W if step > 0 else 0)
        ex = x2 + (0 if step > 0 else _W)
        cy = y1 + _H / 2
        return f'<line x1="{sx}" y1="{cy:g}" x2="{ex - step * 2}" y2="{cy:g}" stroke="{_FAINT}" stroke-width="2" marker-end="url(#arrow)"/>'
    cx = x1 + _W / 2  # down to the next row
    return (f'<line x1="{cx:g}" y1="{y1 + _H}" x2="{cx:g}" y2="{y2 - 2}" stroke="{_FAINT}" stroke-width="2" '
            f'marker-end="url(#arrow)"/>')
