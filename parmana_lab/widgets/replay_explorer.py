"""ReplayExplorer: replayed fingerprints across archives and audit DBs, the executions side by side."""

from __future__ import annotations

from collections.abc import Iterable
from html import escape
from pathlib import Path
from typing import Any

import ipywidgets as w
import pandas as pd

from .._html import frame_html
from ..charts import bar_chart
from ..replays import EXECUTION_COLUMNS, ReplayReport, find_replays
from ._base import Panel, button, guarded, path_lines

SIDE_BY_SIDE = [c for c in EXECUTION_COLUMNS if c != "execution_fingerprint"]


class ReplayExplorer(Panel):
    """find_replays over the listed sources; pick a fingerprint to compare the executions that consumed it.

    Runs at once when given sources. Holds the report (and its DuckDB
    connection) until the next run or ``close()``.
    """

    title = "Replay detection"

    def __init__(self, sources: Iterable[str | Path] = ()) -> None:
        self.report: ReplayReport | None = None
        self.sources = w.Textarea(value="\n".join(map(str, sources)), description="sources",
                                  placeholder="one archive or audit DB path per line", layout=w.Layout(width="90%", height="80px"))
        self.run_button = button("Find replays", self.run, primary=True)
        self.summary = w.HTML()
        self.chart = w.HTML()
        self.fingerprints = w.Select(description="replayed", options=[], rows=6, layout=w.Layout(width="90%"))
        self.occurrences = w.HTML()
        self.reused = w.HTML()
        self.fingerprints.observe(self._show_occurrences, "value")
        super().__init__([self.sources, self.run_button, self.summary, self.chart, self.fingerprints, self.occurrences,
                          self.reused])
        if path_lines(self.sources.value):
            self.run()

    def describe(self) -> str:
        if self.report is None:
            return "not run yet"
        s = self.report.summary
        return f"{len(s.sources)} sources, {s.records} records, {s.replayed_fingerprints} replayed fingerprints"

    def close(self) -> None:
        if self.report is not None:
            self.report.close()
        super().close()

    @guarded
    def run(self) -> None:
        paths = path_lines(self.sources.value)
        if not paths:
            raise ValueError("list at least one archive or audit DB, one path per line")
        self.notify(f"searching {len(paths)} source(s)…")
        report = find_replays(paths)
        if self.report is not None:
            self.report.close()
        self.report = report
        s = report.summary
        self.summary.value = f"<p>{len(s.sources)} source(s): {escape(report.headline())}</p>"
        self.chart.value = bar_chart(report.by_source(), "replays by source") if len(report.executions) else ""
        counts = report.executions.groupby("execution_fingerprint", sort=True)["source"].agg(["count", "unique"])
        self.fingerprints.options = [(f"{fp[:16]}…  {row['count']} executions  in {', '.join(row['unique'])}", fp)
                                     for fp, row in counts.iterrows()]
        self.fingerprints.value = self.fingerprints.options[0][1] if counts.size else None
        self._show_occurrences()
        self.reused.value = ("<b>executionIds reused with different content</b>" + frame_html(report.reused_ids)
                             if len(report.reused_ids) else "")
        self.notify("done" if s.replayed_fingerprints else "no replayed fingerprints")

    def occurrences_of(self, fingerprint: str) -> pd.DataFrame:
        """One column per execution that consumed the fingerprint (its copies under ``also_in``): the side-by-side view."""
        assert self.report is not None
        ex = self.report.executions
        rows = ex[ex["execution_fingerprint"] == fingerprint]
        side = rows[SIDE_BY_SIDE].assign(runtimeHash=rows["runtimeHash"].str[:16] + "…",
                                         also_in=rows["also_in"].map(lambda places: ", ".join(places) or "-")).T
        side.columns = [f"execution {i + 1}" for i in range(side.shape[1])]
        return side

    def _show_occurrences(self, *_: Any) -> None:
        fp = self.fingerprints.value
        if fp is None or self.report is None:
            self.occurrences.value = ""
            return
        self.occurrences.value = f"<p><code>{fp}</code></p>" + self.occurrences_of(fp).to_html()
