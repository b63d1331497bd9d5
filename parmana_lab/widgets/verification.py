"""VerificationDashboard: bulk-verify archives against a trust store and browse the verdicts."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from html import escape
from pathlib import Path
from typing import Any

import ipywidgets as w
import pandas as pd

from .._html import frame_html, verification_html
from ..charts import bar_chart
from ..keys import TrustStore
from ..verify import ArchiveReport, verify_archive
from ._base import Panel, button, guarded, path_lines, progress_to, progress_widget

ALL = "all codes"


class VerificationDashboard(Panel):
    """Choose archives (paths or upload) and a trust store, verify with a live bar, then filter and inspect.

    ``trust`` is a TrustStore or the path of a keyring JSON (``parmana-lab keys --json``);
    the trust-store box, when filled, takes precedence. Runs at once when given
    both archives and a trust store.
    """

    title = "Verify archives"

    def __init__(self, archives: Iterable[str | Path] = (), trust: TrustStore | str | Path | None = None, *,
                 workers: int = 1, known_runtimes: Iterable[str] | None = None) -> None:
        self._trust = trust if isinstance(trust, TrustStore) else None
        self.workers = workers
        self.known_runtimes = list(known_runtimes) if known_runtimes is not None else None
        self.reports: list[ArchiveReport] = []
        self.frame = pd.DataFrame()
        self._uploads = tempfile.TemporaryDirectory(prefix="parmana-upload-")
        self.paths = w.Textarea(value="\n".join(map(str, archives)), description="archives",
                                placeholder="one archive path per line (folder, .zip or .tar.gz)",
                                layout=w.Layout(width="90%", height="70px"))
        self.upload = w.FileUpload(accept=".zip,.gz,.tgz", multiple=True, description="upload archive")
        self.trust_path = w.Text(value="" if trust is None or self._trust is not None else str(trust),
                                 description="trust store",
                                 placeholder="keyring JSON (parmana-lab keys --json)" if self._trust is None
                                 else f"the TrustStore passed in ({len(self._trust.keys)} keys)",
                                 layout=w.Layout(width="90%"))
        self.trust_archive_keys = w.Checkbox(description="also trust each archive's own keys.json (integrity only)",
                                             value=False, indent=False)
        self.run_button = button("Verify", self.run, primary=True)
        self.progress = progress_widget()
        self.summary = w.HTML()
        self.code_filter = w.Dropdown(description="code", options=[ALL])
        self.search = w.Text(description="executionId", placeholder="part of an executionId")
        self.table = w.HTML()
        self.chart = w.HTML()
        self.detail_picker = w.Dropdown(description="detail", options=[], layout=w.Layout(width="90%"))
        self.detail = w.HTML()
        self.upload.observe(self._uploaded, "value")
        self.code_filter.observe(self._refresh_table, "value")
        self.search.observe(self._refresh_table, "value")
        self.detail_picker.observe(self._show_detail, "value")
        super().__init__([
            self.paths, self.upload, self.trust_path, self.trust_archive_keys, w.HBox([self.run_button, self.progress]),
            self.summary, self.chart, w.HBox([self.code_filter, self.search]), self.table, self.detail_picker, self.detail,
        ])
        if archives and (self._trust is not None or self.trust_path.value):
            self.run()

    def describe(self) -> str:
        if not self.reports:
            return f"{len(path_lines(self.paths.value))} archives chosen, not verified yet"
        parts = [f"{r.summary.source} {r.status.upper()} {r.summary.verified}/{r.summary.total}" for r in self.reports]
        return "; ".join(parts)

    def trust_store(self) -> TrustStore:
        if self.trust_path.value.strip():
            return TrustStore.load(self.trust_path.value.strip())
        if self._trust is None:
            raise ValueError("choose a trust store: the keyring JSON that `parmana-lab keys --json` prints")
        return self._trust

    def _uploaded(self, *_: Any) -> None:
        """Uploaded archives are written to a private temporary folder and added to the list."""
        added = []
        for item in self.upload.value:
            target = Path(self._uploads.name) / Path(item["name"]).name
            target.write_bytes(bytes(item["content"]))
            added.append(str(target))
        if added:
            self.paths.value = "\n".join([*filter(None, self.paths.value.splitlines()), *added])
            self.notify(f"uploaded {len(added)} archive(s)")

    @guarded
    def run(self) -> None:
        paths = path_lines(self.paths.value)
        if not paths:
            raise ValueError("choose at least one archive: a path per line, or upload one")
        store = self.trust_store()
        self.reports, reports = [], []
        for path in paths:
            reports.append(verify_archive(path, store, workers=self.workers, progress=progress_to(self.progress, path.name),
                                          known_runtimes=self.known_runtimes, trust_archive_keys=self.trust_archive_keys.value))
        self.reports = reports
        self.frame = pd.concat([r.to_pandas().assign(archive=r.source) for r in reports], ignore_index=True)
        self.summary.value = summary_html(reports)
        counts = self.frame.pivot_table(index="code", columns="archive", values="line", aggfunc="count", fill_value=0)
        self.chart.value = bar_chart(counts, "attestations by reason code") if len(self.frame) else ""
        self.code_filter.options = [ALL, *sorted(self.frame["code"].unique())] if len(self.frame) else [ALL]
        self.code_filter.value = ALL
        self._refresh_table()
        failed = sum(r.status == "failed" for r in reports)
        self.notify(f"verified {len(reports)} archive(s): {failed} with failures")

    def filtered(self) -> pd.DataFrame:
        df = self.frame
        if not len(df):
            return df
        if self.code_filter.value != ALL:
            df = df[df["code"] == self.code_filter.value]
        if self.search.value:
            df = df[df["executionId"].fillna("").str.contains(self.search.value, regex=False)]
        return df

    def _refresh_table(self, *_: Any) -> None:
        df = self.filtered()
        if not len(df):
            self.table.value, self.detail_picker.options = "", []
            return
        shown = ["archive", "line", "executionId", "policyId", "policyVersion", "action", "status", "code", "hint"]
        self.table.value = frame_html(df[[c for c in shown if c in df.columns]])
        self.detail_picker.options = [(f"{r.archive} line {r.line}: {r.code} {r.executionId or ''}", (r.archive, int(r.line)))
                                      for r in df.head(500).itertuples()]

    def _show_detail(self, *_: Any) -> None:
        if self.detail_picker.value is None:
            self.detail.value = ""
            return
        source, line = self.detail_picker.value
        report = next(r for r in self.reports if r.source == source)
        self.detail.value = verification_html(report.result(line))


def summary_html(reports: list[ArchiveReport]) -> str:
    """One row per archive: its status, counts and archive-level codes; then whose keys were trusted."""
    rows = pd.DataFrame([
        {"archive": s.source, "status": s.status.upper(), "attestations": s.total, "verified": s.verified, "warnings": s.warnings,
         "failed": s.failed, "archive checks": ", ".join(s.archive_codes) or "—"}
        for s in (r.summary for r in reports)
    ])
    trusts = sorted({r.trust for r in reports})
    return frame_html(rows) + "".join(f"<p style='font-size:12px'>trust: {escape(t)}</p>" for t in trusts)
