"""ExecutionForm: run one request through a Runtime from a form built from the policy's signalsSchema."""

from __future__ import annotations

from typing import Any

import ipywidgets as w
import pandas as pd

from .._html import attestation_html, badge, error_html, frame_html
from ..errors import ParmanaError
from ..policy import Policy, SignalSpec, version_order
from ..runtime import Runtime
from ..verify import verify_attestation
from ._base import Panel, button, guarded


def signal_input(name: str, spec: SignalSpec) -> w.Widget:
    """The input a person expects for a signal type: enum -> dropdown, boolean -> checkbox."""
    style = {"description_width": "160px"}
    if spec.type == "integer":
        return w.IntText(description=name, value=0, style=style)
    if spec.type == "boolean":
        return w.Checkbox(description=name, value=False, indent=True, style=style)
    if spec.type == "enum":
        return w.Dropdown(description=name, options=list(spec.values or ()), style=style)
    return w.Text(description=name, value="", style=style)


class ExecutionForm(Panel):
    """Pick a policy and version, fill in its signals, Execute: see the attestation or the refusal."""

    title = "Run an execution"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.history: list[dict[str, Any]] = []
        self.last: Any = None  # the last attestation or refusal
        scanned = runtime.policies.scan()
        loaded = [p for p in scanned if isinstance(p, Policy)]
        broken = [p for p in scanned if not isinstance(p, Policy)]
        self._policies = {p.key: p for p in loaded}
        ids = sorted({p.policyId for p in loaded})
        self.policy = w.Dropdown(description="policy", options=ids)
        self.version = w.Dropdown(description="version")
        self.inputs = w.VBox()
        self.execute_button = button("Execute", self.execute, primary=True)
        self.result = w.HTML()
        self.history_table = w.HTML()
        self.policy.observe(self._policy_changed, "value")
        self.version.observe(self._version_changed, "value")
        super().__init__([w.HBox([self.policy, self.version]), self.inputs, self.execute_button, self.result,
                          w.HTML("<b>This session</b>"), self.history_table])
        self._policy_changed()
        if broken:  # say why a policy is missing from the list rather than leave it out silently
            self.fail(broken[0])
            if len(broken) > 1:
                self.status.value += f"<div>… and {len(broken) - 1} more policy file(s) that could not be loaded</div>"
        elif not ids:
            self.notify(f"no loadable policies in {runtime.policies.root}")

    def describe(self) -> str:
        attested = sum(1 for h in self.history if h["outcome"] == "attested")
        return (f"{self.policy.value} {self.version.value}; {len(self.history)} executions this session, "
                f"{attested} attested, {len(self.history) - attested} refused")

    @property
    def selected_policy(self) -> Policy | None:
        return self._policies.get((self.policy.value, self.version.value))

    def _policy_changed(self, *_: Any) -> None:
        versions = sorted((v for p, v in self._policies if p == self.policy.value), key=version_order)
        self.version.options = versions
        self.version.value = versions[-1] if versions else None
        self._version_changed()

    def _version_changed(self, *_: Any) -> None:
        policy = self.selected_policy
        self.inputs.children = [signal_input(name, spec) for name, spec in policy.signalsSchema.items()] if policy else []

    def signals(self) -> dict[str, Any]:
        return {box.description: box.value for box in self.inputs.children}

    def set_signals(self, **values: Any) -> None:
        """Fill the form from Python (what a person does by typing)."""
        boxes = {box.description: box for box in self.inputs.children}
        for name, value in values.items():
            if name not in boxes:
                raise KeyError(f"{self.policy.value} {self.version.value} has no signal {name!r}; it has {sorted(boxes)}")
            boxes[name].value = value

    def request(self) -> dict[str, Any]:
        return {"policyId": self.policy.value, "policyVersion": self.version.value, "signals": self.signals()}

    @guarded
    def execute(self) -> None:
        if self.selected_policy is None:
            raise ValueError("choose a policy and a version first")
        request = self.request()
        try:
            att = self.runtime.execute(request)
        except ParmanaError as exc:
            self.last = exc
            self.result.value = error_html(exc)
            self.history.append({"outcome": "refused", "policy": f"{request['policyId']} {request['policyVersion']}",
                                 "decision": "", "code": exc.code, "executionId": "", "fingerprint": ""})
        else:
            self.last = att
            check = verify_attestation(att, self.runtime.trust_store(), signals=request["signals"], policy=self.selected_policy)
            self.result.value = (attestation_html(att) + f"<p>signature and content checks: {badge(check.status)} "
                                 f"{check.code}</p>")
            self.history.append({"outcome": "attested", "policy": f"{att.policyId} {att.policyVersion}",
                                 "decision": att.decision.action, "code": check.code, "executionId": att.executionId,
                                 "fingerprint": att.execution_fingerprint[:16] + "…"})
        self.history_table.value = frame_html(self.history_frame())
        self.notify(f"{len(self.history)} executions this session")

    def history_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.history, columns=["outcome", "policy", "decision", "code", "executionId", "fingerprint"])
