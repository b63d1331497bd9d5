"""Many archives at once, on this machine or a Dask cluster, with one combined report.

A batch keeps each archive's summary and its failed lines; the rows of every line
(what ArchiveReport.to_pandas shows) go to ``results_dir`` when one is given, one
file per archive, so a batch of thousands of archives never holds every row in
memory. ``iter_verify_archives`` yields the full reports one at a time instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from .errors import ParmanaError
from .progress import Progress
from .verify import ArchiveReport, ArchiveSummary, VerificationResult, verify_archive

if TYPE_CHECKING:
    import pandas as pd


class ArchiveOutcome(BaseModel):
    """One archive of a batch: its summary, its failed lines, or why it could not be used at all."""

    model_config = ConfigDict(defer_build=True)

    path: str
    status: Literal["verified", "failed", "unusable"]
    summary: ArchiveSummary | None = None
    failures: list[VerificationResult] = []
    error: dict[str, str] | None = None
    rows_file: str | None = None


class BatchReport(BaseModel):
    model_config = ConfigDict(defer_build=True)

    archives: list[ArchiveOutcome]

    @property
    def status(self) -> Literal["verified", "failed"]:
        return "verified" if all(a.status == "verified" for a in self.archives) else "failed"

    @property
    def summary(self) -> dict[str, Any]:
        counts = Counter(a.status for a in self.archives)
        lines = Counter()
        for a in self.archives:
            if a.summary is not None:
                lines.update(total=a.summary.total, verified=a.summary.verified, warnings=a.summary.warnings,
                             failed=a.summary.failed)
        return {"archives": len(self.archives), **{k: counts.get(k, 0) for k in ("verified", "failed", "unusable")},
                "attestations": {k: lines.get(k, 0) for k in ("total", "verified", "warnings", "failed")}}

    def failures(self) -> list[tuple[str, VerificationResult]]:
        return [(a.path, f) for a in self.archives for f in a.failures]

    def to_pandas(self) -> pd.DataFrame:
        """One row per archive: status, counts, codes (archive-level and by line)."""
        import pandas as pd

        return pd.DataFrame([{"path": a.path, "status": a.status, "total": a.summary.total if a.summary else None,
                              "verified": a.summary.verified if a.summary else None,
                              "failed": a.summary.failed if a.summary else None,
                              "codes": ", ".join(a.summary.archive_codes + [c for c in a.summary.codes if c != "VERIFIED"])
                              if a.summary else (a.error or {}).get("code"), "rows_file": a.rows_file}
                             for a in self.archives])

    def __repr__(self) -> str:
        s = self.summary
        return (f"BatchReport({s['archives']} archives: {s['verified']} verified, {s['failed']} failed, "
                f"{s['unusable']} unusable; {s['attestations']['total']} attestations)")

    def _repr_html_(self) -> str:
        return f"<p>{escape(repr(self))}</p>" + self.to_pandas().to_html(index=False)


def iter_verify_archives(paths: Iterable[str | Path], trust_store: Any, *, client: Any = None, workers: int = 1,
                         progress: Progress = True, scratch: str | Path | None = None,
                         **options: Any) -> Iterator[tuple[str, ArchiveReport | ParmanaError]]:
    """(path, report or the refusal that made it unusable) per archive, in the order given.

    With a Dask ``client`` the cluster's workers do the reading and checking (cluster.py); ``scratch`` is a folder
    on storage they share, for unpacking .zip / .tar.gz archives.
    """
    if client is not None:
        from .cluster import verify_on_cluster

        if "chunk_lines" in options:
            options["block_lines"] = options.pop("chunk_lines")
        yield from verify_on_cluster(client, paths, trust_store, scratch=scratch, progress=progress, **options)
        return
    for path in paths:
        try:
            yield str(path), verify_archive(path, trust_store, workers=workers, progress=progress, **options)
        except ParmanaError as exc:
            yield str(path), exc


def verify_archives(paths: Iterable[str | Path], trust_store: Any, *, client: Any = None, workers: int = 1,
                    progress: Progress = True, results_dir: str | Path | None = None, scratch: str | Path | None = None,
                    **options: Any) -> BatchReport:
    """Verify every archive (same options as verify_archive); the combined report keeps summaries and failures."""
    outcomes = []
    rows_dir = Path(results_dir) if results_dir is not None else None
    if rows_dir is not None:
        rows_dir.mkdir(parents=True, exist_ok=True)
    for n, (path, result) in enumerate(iter_verify_archives(paths, trust_store, client=client, workers=workers,
                                                            progress=progress, scratch=scratch, **options)):
        if isinstance(result, ParmanaError):
            outcomes.append(ArchiveOutcome(path=path, status="unusable", error=result.to_dict()))
            continue
        rows_file = None
        if rows_dir is not None:
            rows_file = str(rows_dir / f"{n:05d}-{Path(path).name}.csv")
            result.to_pandas().to_csv(rows_file, index=False)
        outcomes.append(ArchiveOutcome(path=path, status=result.status, summary=result.summary, failures=result.failures(),
                                       rows_file=rows_file))
    return BatchReport(archives=outcomes)
