"""Readable reports (Markdown, HTML) for verification results; presentation only."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .verify import ArchiveReport

MAX_ROWS = 200


def archive_markdown(report: ArchiveReport) -> str:
    s = report.summary
    out = [
        f"# Verification of `{s.source}`: **{s.status.upper()}**",
        "",
        f"{s.verified} of {s.total} attestations verified, {s.warnings} warnings, {s.failed} failed"
        + (f"; archive checks failed: {', '.join(s.archive_codes)}" if s.archive_codes else "") + f". Trust: {s.trust}.",
        "",
        "| code | count |",
        "| --- | ---: |",
        *(f"| {code} | {n} |" for code, n in s.codes.items()),
    ]
    if report.archive_checks:
        out += ["", "## Archive checks", "", "| code | expected | observed | lines | hint |", "| --- | --- | --- | --- | --- |"]
        out += [f"| {c.code} | {c.expected} | {c.observed} | {c.lines or ''} | {c.hint} |" for c in report.archive_checks]
    failures = report.failures()
    if failures:
        out += ["", "## Failures", "", "| line | executionId | code | expected | observed | hint |", "| ---: | --- | --- | --- | --- | --- |"]
        out += [
            f"| {r.line} | {r.executionId or ''} | {r.code} | {r.expected or ''} | {r.observed or ''} | {r.hint} |"
            for r in failures[:MAX_ROWS]
        ]
        if len(failures) > MAX_ROWS:
            out.append(f"\n… and {len(failures) - MAX_ROWS} more (see `report.failures()` or `report.to_pandas()`).")
    return "\n".join(out) + "\n"


def archive_html(report: ArchiveReport) -> str:
    s = report.summary
    colour = "#1a7f37" if s.status == "verified" else "#cf222e"
    codes = "".join(f"<tr><td>{escape(c)}</td><td style='text-align:right'>{n}</td></tr>" for c, n in s.codes.items())
    parts = [
        f"<div><h3 style='margin:4px 0'>Verification of <code>{escape(s.source)}</code>: "
        f"<span style='color:{colour}'>{s.status.upper()}</span></h3>",
        f"<p>{s.verified} of {s.total} verified, {s.warnings} warnings, {s.failed} failed"
        + (f"; archive checks failed: {escape(', '.join(s.archive_codes))}" if s.archive_codes else "")
        + f". Trust: {escape(s.trust)}.</p>",
        f"<table style='font-size:12px'><tr><th>code</th><th>count</th></tr>{codes}</table>",
    ]
    if report.archive_checks:
        rows = "".join(
            f"<tr><td>{escape(c.code)}</td><td>{escape(c.expected)}</td><td>{escape(c.observed)}</td><td>{escape(c.hint)}</td></tr>"
            for c in report.archive_checks
        )
        parts.append(f"<h4>Archive checks</h4><table style='font-size:12px'>{rows}</table>")
    failures = report.failures()[:MAX_ROWS]
    if failures:
        rows = "".join(
            f"<tr><td>{r.line}</td><td>{escape(r.executionId or '')}</td><td>{escape(r.code)}</td>"
            f"<td>{escape(r.expected or '')}</td><td>{escape(r.observed or '')}</td><td>{escape(r.hint)}</td></tr>"
            for r in failures
        )
        parts.append(
            "<h4>Failures</h4><table style='font-size:12px'><tr><th>line</th><th>executionId</th><th>code</th>"
            f"<th>expected</th><th>observed</th><th>hint</th></tr>{rows}</table>"
        )
    return "".join(parts) + "</div>"


def archive_text(report: ArchiveReport, max_failures: int = 20) -> str:
    """A terminal summary: status, counts by code, archive checks, the first failures."""
    s = report.summary
    archive = f"; archive checks failed: {', '.join(s.archive_codes)}" if s.archive_codes else ""
    lines = [
        f"{s.source}: {s.status.upper()}  {s.total} attestations: {s.verified} verified, {s.warnings} warnings, "
        f"{s.failed} failed{archive}",
        f"  trust: {s.trust}; {s.authorship}",
        "  codes: " + (", ".join(f"{c} {n}" for c, n in s.codes.items()) or "none (empty archive)"),
    ]
    if s.overrides:
        lines.append("  overrides (decision trails checked against the authority file): "
                     + ", ".join(f"{k} {n}" for k, n in s.overrides.items()))
    for c in report.archive_checks:
        lines.append(f"  archive {c.code}: expected {c.expected}, observed {c.observed}" + (f" [{c.lines}]" if c.lines else ""))
    failures = report.failures()
    for r in failures[:max_failures]:
        lines.append(f"  line {r.line:>6} {r.executionId or '?'}: {r.code} — {r.hint} (expected {r.expected}, observed {r.observed})")
    if len(failures) > max_failures:
        lines.append(f"  … {len(failures) - max_failures} more failures (use --json)")
    return "\n".join(lines)
