"""Small charts for audit reports, rendered to inline PNG (presentation only)."""

from __future__ import annotations

import base64
import io

import pandas as pd


def bar_chart(counts: pd.DataFrame, title: str) -> str:
    """A stacked horizontal bar chart of a (category x series) count table, as an <img> tag."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.4 * max(len(counts), 2) + 1))
    try:
        counts.plot.barh(stacked=True, ax=ax, width=0.7)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title=counts.columns.name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("count")
        ax.invert_yaxis()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
    finally:
        plt.close(fig)
    return f"<img alt='{title}' src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'/>"
