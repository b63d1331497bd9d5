"""AttestationInspector: every field, the exact signed bytes, and a teaching mode that tampers and re-verifies."""

from __future__ import annotations

import json
from html import escape
from typing import Any

import ipywidgets as w

from .._html import verification_html
from ..attestation import FIELDS, ExecutionAttestation
from ..canonical import canonicalize, parse_json
from ..errors import ParmanaError
from ..keys import TrustStore
from ..policy import Policy
from ..verify import VerificationResult, verify_attestation
from ._base import Panel, button, guarded

DECISION_FIELDS = ("action", "requires_override", "reason", "ruleId")
EDITABLE = [f for f in FIELDS if f != "decision"] + [f"decision.{f}" for f in DECISION_FIELDS]


def _pre(text: str) -> str:
    return f"<pre style='white-space:pre-wrap;word-break:break-all;font-size:11px'>{escape(text)}</pre>"


def printable(data: bytes) -> str:
    """Bytes as text a person can read: UTF-8 where it is, \\xNN escapes where not."""
    return data.decode("utf-8", "backslashreplace")


class AttestationInspector(Panel):
    """Look inside one attestation; edit one field and watch verification fail with the exact reason.

    ``signals`` and ``policy`` enable the content checks (fingerprint, signalsHash,
    bundleHash, re-evaluation), as in ``verify_attestation``.
    """

    title = "Attestation inspector"

    def __init__(self, attestation: ExecutionAttestation | dict[str, Any] | str | bytes, trust_store: TrustStore | None = None,
                 *, signals: dict[str, Any] | None = None, policy: Policy | None = None) -> None:
        if not isinstance(attestation, ExecutionAttestation):
            data = parse_json(attestation) if isinstance(attestation, (str, bytes)) else attestation
            attestation = ExecutionAttestation.model_validate(data)
        self.attestation = attestation
        self.trust_store = trust_store or TrustStore()
        self.signals, self.policy = signals, policy
        self.original = self.verify(attestation.to_dict())
        self.tampered: VerificationResult | None = None
        fields = w.HTML(_pre(json.dumps(attestation.to_dict(), indent=2, ensure_ascii=False)))
        payload = w.HTML(_pre(printable(canonicalize(attestation.body()))))
        message = attestation.signing_message()
        pae_view = w.HTML(f"<p>{len(message)} bytes signed with Ed25519 by key {attestation.signerKeyId}</p>"
                          + _pre(printable(message)))
        tabs = w.Tab(children=[fields, payload, pae_view, w.HTML(verification_html(self.original))])
        for i, name in enumerate(["fields", "payload (JCS)", "signed bytes (PAE)", "verification"]):
            tabs.set_title(i, name)
        self.field = w.Dropdown(description="field", options=EDITABLE, value="decision.action")
        self.value = w.Text(description="new value", placeholder="JSON: \"text\", true, 42, null",
                            layout=w.Layout(width="90%"))
        self.tamper_button = button("Tamper and verify", self.tamper, primary=True)
        self.reset_button = button("Reset", self.reset)
        self.outcome = w.HTML()
        self.field.observe(self._field_changed, "value")
        super().__init__([tabs, w.HTML("<b>Teaching mode:</b> change one field, keep the signature, verify again."),
                          w.HBox([self.field, self.value]), w.HBox([self.tamper_button, self.reset_button]), self.outcome])
        self._field_changed()

    def describe(self) -> str:
        now = f"; tampered: {self.tampered.code}" if self.tampered is not None else ""
        return f"{self.attestation.executionId}: {self.original.code}{now}"

    def verify(self, data: dict[str, Any]) -> VerificationResult:
        return verify_attestation(data, self.trust_store, signals=self.signals, policy=self.policy)

    def current(self, field: str) -> Any:
        data = self.attestation.to_dict()
        for part in field.split("."):
            data = data[part]
        return data

    def _field_changed(self, *_: Any) -> None:
        self.value.value = json.dumps(self.current(self.field.value), ensure_ascii=False)

    @guarded
    def tamper(self) -> None:
        try:
            value = parse_json(self.value.value)
        except ParmanaError as exc:
            raise ValueError(f"the new value must be JSON (text in double quotes): {exc.reason}") from None
        data = self.attestation.to_dict()
        *parents, last = self.field.value.split(".")
        target = data
        for part in parents:
            target = target[part]
        target[last] = value
        self.tampered = result = self.verify(data)
        self.outcome.value = self._explain(data, result)
        self.notify(f"{self.field.value} changed: {result.code}")

    def _explain(self, data: dict[str, Any], result: VerificationResult) -> str:
        body = {k: v for k, v in data.items() if k != "signature"}
        try:
            before, after = canonicalize(self.attestation.body()), canonicalize(body)
        except ParmanaError as exc:
            bytes_note = f"the edited body cannot even be canonicalized: {exc.reason}"
        else:
            at = next((i for i, (a, b) in enumerate(zip(before, after)) if a != b), min(len(before), len(after)))
            length = f"; its length in the PAE header changes too ({len(before)} → {len(after)})" if len(before) != len(after) else ""
            bytes_note = ("the signed bytes are unchanged" if before == after else
                          f"the signed payload now differs from byte {at} on: …{printable(after[max(at - 24, 0):at + 36])}…"
                          f"{length}")
        return f"<p>{escape(bytes_note)}</p>" + verification_html(result)

    @guarded
    def reset(self) -> None:
        self.tampered = None
        self.outcome.value = ""
        self._field_changed()
        self.notify("back to the original attestation")
