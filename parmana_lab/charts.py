"""Small charts for audit reports, rendered to inline PNG (presentation only).

Figures are drawn on their own Agg canvas, never through pyplot: a report or
panel must not switch the notebook's matplotlib backend or leave figures in
pyplot's global state.
"""

from __future__ import annotations

import base64
import io
import warnings

import pandas as pd


def bar_chart(counts: pd.DataFrame, title: str) -> str:
    """A stacked horizontal bar chart of a (category x series) count table, as an <img> tag."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = counts.rename(index=lambda label: _short(str(label)))
    fig = Figure(figsize=(6, 0.4 * max(len(counts), 2) + 1))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    counts.plot.barh(stacked=True, ax=ax, width=0.7)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title=counts.columns.name)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("count")
    ax.invert_yaxis()
    with warnings.catch_warnings():  # a long label cannot always fit: the chart is still right
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return f"<img alt='{title}' src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'/>"


def _short(label: str, width: int = 36) -> str:
    """Sources are full paths: keep their end, which tells them apart."""
    return label if len(label) <= width else "…" + label[-(width - 1):]
