"""ReproducibilityPanel: re-run an archive or audit DB, read the divergences, ask what another version decides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ipywidgets as w
import pandas as pd

from .._html import frame_html, table
from ..charts import bar_chart
from ..evaluate import evaluate
from ..policy import PolicyStore, version_order
from ..reproducibility import Evaluator, ReproReport, reproduce
from ..workspace import default_policy_dir
from ._base import Panel, button, guarded, progress_to, progress_widget

ROW_COLUMNS = ["line", "executionId", "policyId", "policyVersion", "replayedWith", "status", "attested", "now", "why"]


class ReproducibilityPanel(Panel):
    """``reproduce(source)`` with counts, a diverged row's diff, and a what-if version picker.

    ``policies`` is the folder the what-if versions come from (the sample
    policies by default); ``evaluator`` is passed to ``reproduce`` (the kit's
    own by default). Runs at once when given a source.
    """

    title = "Reproducibility audit"

    def __init__(self, source: str | Path | None = None, *, policies: str | Path | PolicyStore | None = None,
                 evaluator: Evaluator = evaluate) -> None:
        self.evaluator = evaluator
        self.store = policies if isinstance(policies, PolicyStore) else PolicyStore(policies or default_policy_dir())
        self.report: ReproReport | None = None
        self.what_if_report: ReproReport | None = None
        self.source = w.Text(value=str(source or ""), description="source", placeholder="archive or audit DB path",
                             layout=w.Layout(width="90%"))
        self.run_button = button("Re-run", self.run, primary=True)
        self.progress = progress_widget()
        self.counts = w.HTML()
        self.chart = w.HTML()
        self.rows = w.HTML()
        self.diverged = w.Dropdown(description="diverged", options=[], layout=w.Layout(width="90%"))
        self.diff = w.HTML()
        self.what_if_policy = w.Dropdown(description="policy", options=[])
        self.what_if_version = w.Dropdown(description="version", options=[])
        self.what_if_button = button("What would it decide?", self.what_if)
        self.changes = w.HTML()
        self.diverged.observe(self._show_diff, "value")
        self.what_if_policy.observe(self._policy_changed, "value")
        super().__init__([
            self.source, w.HBox([self.run_button, self.progress]), self.counts, self.chart, self.rows, self.diverged, self.diff,
            w.HTML("<b>What would another version decide?</b>"),
            w.HBox([self.what_if_policy, self.what_if_version, self.what_if_button]), self.changes,
        ])
        if source is not None:
            self.run()

    def describe(self) -> str:
        if self.report is None:
            return "not run yet"
        return ", ".join(f"{k} {v}" for k, v in self.report.summary.statuses.items())

    @guarded
    def run(self) -> None:
        if not self.source.value.strip():
            raise ValueError("give an archive or audit DB path to re-run")
        self.notify("re-running…")
        source = Path(self.source.value.strip())
        report = reproduce(source, evaluator=self.evaluator, progress=progress_to(self.progress, source.name))
        self.report = report
        s = report.summary
        self.counts.value = table([*s.statuses.items(), ("recorded by another runtime build", s.other_runtime),
                                   ("decided by another evaluator build", s.other_evaluator)], title=s.source)
        self.chart.value = bar_chart(report.by_policy(), "re-execution by policy") if s.total else ""
        df = report.to_pandas()
        self.rows.value = frame_html(df[df["status"] != "MATCH"][ROW_COLUMNS])
        self.diverged.options = [(f"line {r.line}: {r.executionId} ({r.policyId} {r.policyVersion})", int(r.line))
                                 for r in df[df["status"] == "DIVERGED"].itertuples()]
        ids = sorted({p for p in df["policyId"].dropna()})
        self.what_if_policy.options = ids
        self._policy_changed()
        self.notify(f"re-ran {s.total} executions")

    def row(self, line: int) -> dict[str, Any]:
        assert self.report is not None
        return next(r for r in self.report.rows if r["line"] == line)

    def _show_diff(self, *_: Any) -> None:
        if self.diverged.value is None or self.report is None:
            self.diff.value = ""
            return
        r = self.row(self.diverged.value)
        diff = pd.DataFrame([(field, json.dumps(was), json.dumps(now)) for field, (was, now) in r["diff"].items()],
                            columns=["field", "attested", "re-executed"])
        self.diff.value = f"<p>{r['executionId']}: {r['attested']} → {r['now']}</p>" + diff.to_html(index=False)

    def _policy_changed(self, *_: Any) -> None:
        versions = self.store.versions(self.what_if_policy.value) if self.what_if_policy.value else []
        self.what_if_version.options = sorted(versions, key=version_order)

    @guarded
    def what_if(self) -> None:
        pid, version = self.what_if_policy.value, self.what_if_version.value
        if not (pid and version):
            raise ValueError(f"no versions of {pid or 'a policy'} in {self.store.root}; run the audit first and pick one")
        self.notify(f"re-running {pid} under {version}…")
        source = Path(self.source.value.strip())
        self.what_if_report = reproduce(source, policy_versions={pid: version}, policies=self.store, evaluator=self.evaluator,
                                       progress=progress_to(self.progress, f"{source.name} @ {version}"))
        changes = self.what_if_report.changes()
        self.changes.value = (f"<p>{len(changes)} of {self.what_if_report.summary.total} decisions would change under "
                              f"{pid} {version}.</p>" + (frame_html(changes[ROW_COLUMNS]) if len(changes) else ""))
        self.notify(f"what-if {pid} {version}: {len(changes)} changes")
