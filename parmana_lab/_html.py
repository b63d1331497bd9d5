"""Small HTML renderings for Jupyter (``_repr_html_``); presentation only."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .attestation import ExecutionAttestation
    from .policy import Policy

_STYLE = "font-family:monospace;font-size:12px;border-collapse:collapse"
_BADGE = {
    "approve": "#1a7f37",
    "completed": "#1a7f37",
    "reject": "#cf222e",
    "pending_override": "#9a6700",
    "verified": "#1a7f37",
    "warning": "#9a6700",
    "failed": "#cf222e",
    "approved": "#1a7f37",
    "rejected": "#cf222e",
    "expired": "#57606a",
    "pending": "#9a6700",
}


def table(rows: list[tuple[str, Any]], title: str = "") -> str:
    head = f"<caption style='text-align:left;font-weight:bold'>{escape(title)}</caption>" if title else ""
    body = "".join(
        f"<tr><th style='text-align:left;padding:2px 8px'>{escape(str(k))}</th>"
        f"<td style='padding:2px 8px'>{v if isinstance(v, Html) else escape(str(v))}</td></tr>"
        for k, v in rows
    )
    return f"<table style='{_STYLE}'>{head}{body}</table>"


class Html(str):
    """Already-escaped markup."""


def badge(text: str) -> Html:
    colour = _BADGE.get(text, "#57606a")
    return Html(f"<span style='color:white;background:{colour};padding:1px 6px;border-radius:8px'>{escape(text)}</span>")


def attestation_html(att: ExecutionAttestation) -> str:
    d = att.decision
    return table(
        [
            ("executionId", att.executionId),
            ("policy", f"{att.policyId} {att.policyVersion}"),
            ("decision", badge(d.action)),
            ("rule", d.ruleId),
            ("reason", d.reason),
            ("execution_state", badge(att.execution_state)),
            ("execution_fingerprint", att.execution_fingerprint),
            ("signalsHash", att.signalsHash),
            ("bundleHash", att.bundleHash),
            ("runtime", f"{att.runtimeVersion} ({att.runtimeHash[:16]}…)"),
            ("evaluatorArtifactHash", att.evaluatorArtifactHash),
            ("issuedAt", att.issuedAt),
            ("signerKeyId", att.signerKeyId),
            ("signature", att.signature[:24] + "…"),
        ],
        title="ExecutionAttestation",
    )


def policy_html(policy: Policy) -> str:
    rows: list[tuple[str, Any]] = [
        ("policy", f"{policy.policyId} {policy.policyVersion}"),
        ("bundleHash", policy.bundleHash),
        ("signals", ", ".join(f"{k}: {v.type}" for k, v in policy.signalsSchema.items())),
    ]
    rows += [(f"rule {r.id}", f"→ {r.outcome.action}{' (override)' if r.outcome.requires_override else ''}") for r in policy.rules]
    rows += [(w.code, w.reason) for w in policy.warnings]
    return table(rows, title="Policy")


def verification_html(result) -> str:
    rows: list[tuple[str, Any]] = [
        ("executionId", result.executionId or "?"),
        ("status", badge(result.status)),
        ("code", result.code),
        ("hint", result.hint),
    ]
    if result.expected is not None:
        rows += [("expected", result.expected), ("observed", result.observed)]
    rows.append(("checks", Html(" ".join(_check_chip(name, status) for name, status in result.checks.items()))))
    return table(rows, title="VerificationResult")


_CHECK_COLOURS = {"verified": "#1a7f37", "failed": "#cf222e", "warning": "#9a6700"}


def _check_chip(name: str, status: str) -> str:
    colour = _CHECK_COLOURS.get(status, "#57606a")
    return f"<span title='{escape(status)}' style='color:{colour};white-space:nowrap'>{escape(name)}: {escape(status)}</span>"


def error_html(exc: BaseException) -> str:
    """A refusal as a person reads it: code, stage, reason (never a traceback)."""
    code, stage, reason = getattr(exc, "code", None), getattr(exc, "stage", None), getattr(exc, "reason", None)
    if code is None:  # not one of ours: still a message, with the type to search for
        code, stage, reason = "internal error", type(exc).__name__, str(exc) or repr(exc)
    return (f"<div style='border-left:4px solid #cf222e;padding:4px 8px;background:#fff5f5'>"
            f"<b>{escape(code)}</b> at <i>{escape(stage)}</i>: {escape(reason)}</div>")


def notice_html(text: str) -> str:
    return f"<div style='color:#57606a;padding:2px 0'>{escape(text)}</div>"


def frame_html(df, max_rows: int = 200) -> str:
    """A DataFrame as a compact table, cut at ``max_rows`` with a note saying so."""
    more = f"<p>… {len(df) - max_rows} more rows</p>" if len(df) > max_rows else ""
    return f"<div style='max-height:320px;overflow:auto;font-size:12px'>{df.head(max_rows).to_html(index=False)}</div>{more}"


def trail_html(trail: Any) -> str:
    """An execution's decision trail, one row per record (request → votes → outcome)."""
    rows: list[tuple[str, Any]] = []
    for r in trail.records:
        b = r.body
        if r.kind == "request":
            rows.append(("request", f"{b['openedAt']} → {b['expiresAt']}  {b['policyId']} {b['policyVersion']} rule {b['ruleId']}"))
        elif r.kind == "resolution":
            rows.append(("vote", Html(f"{badge(b['decision'])} {escape(b['approverId'])} ({escape(b['approverRole'])}) "
                                      f"{escape(b['issuedAt'])}: {escape(b['reason'])}")))
        else:
            rows.append(("outcome", Html(f"{badge(b['outcome'])} {escape(b['issuedAt'])}, "
                                         f"{len(b['resolutionHashes'])} vote(s) counted")))
    return table(rows, f"{trail.executionId}: {trail.state}")
