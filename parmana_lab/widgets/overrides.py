"""OverridePanel: the pending queue, the full request shown before signing, sign with a key file and submit, the trail.

The approver's key file is read by sign_resolution on this machine and never handed to the runtime: the runtime
receives the signed envelope only, exactly as `parmana-lab overrides submit` would.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

import ipywidgets as w

from .._html import trail_html
from ..canonical import canonicalize
from ..overrides import describe_request, load_request, sign_resolution
from ..runtime import Runtime
from ._base import Panel, button, guarded


class OverridePanel(Panel):
    """Pick a pending execution, read what you are asked to decide, vote with your own key."""

    title = "Overrides"

    def __init__(self, runtime: Runtime, *, key_file: str | Path = "", approver_id: str = "") -> None:
        self.runtime = runtime
        self.show_all = w.Checkbox(value=False, description="include resolved")
        self.queue = w.Select(description="executions", options=[], rows=6, layout=w.Layout(width="95%"))
        self.request = w.HTML()
        self.key_file = w.Text(value=str(key_file), description="key file", placeholder="your private key (.pem)")
        self.approver_id = w.Text(value=approver_id, description="approver")
        self.role = w.Dropdown(description="role", options=[])
        self.decision = w.ToggleButtons(options=[("Approve", "approve"), ("Reject", "reject")], value="approve")
        self.reason = w.Textarea(description="reason", placeholder="why (required)", layout=w.Layout(width="95%"))
        self.submit_button = button("Sign and submit", self.submit, primary=True)
        self.trail = w.HTML()
        self.last = None
        self.queue.observe(self._show, "value")
        self.show_all.observe(lambda *_: self.refresh(), "value")
        super().__init__([self.show_all, self.queue, self.request, self.key_file, self.approver_id, self.role, self.decision,
                          self.reason, self.submit_button, self.trail])
        self.refresh()

    def describe(self) -> str:
        pending = [o for o in self.queue.options if "pending" in o[0]]
        return f"{len(self.queue.options)} listed, {len(pending)} pending"

    @guarded
    def refresh(self) -> None:
        chosen = self.queue.value
        statuses = self.runtime.pending_overrides(include_resolved=self.show_all.value)
        self.queue.options = [(f"{s.state:<8} {s.executionId[:13]}…  {s.policyId} {s.policyVersion}  {s.ruleId}  "
                               f"({len(s.approvals)} approve, {len(s.rejections)} reject)", s.executionId) for s in statuses]
        ids = [s.executionId for s in statuses]
        self.queue.value = chosen if chosen in ids else (ids[0] if ids else None)
        self._show()
        self.notify(f"{sum(s.state == 'pending' for s in statuses)} pending override(s)")

    def _show(self, *_: Any) -> None:
        execution_id = self.queue.value
        if execution_id is None:
            self.request.value = self.trail.value = ""
            self.role.options = []
            return
        record = load_request(self.runtime.override_request(execution_id))
        rule = record.body["override"] or {"roles": []}
        self.role.options = rule["roles"]
        self.role.value = rule["roles"][0] if rule["roles"] else None
        self.request.value = (f"<pre style='white-space:pre-wrap'>{escape(describe_request(record))}</pre>"
                              f"<details><summary>request envelope</summary><code>"
                              f"{escape(canonicalize(record.envelope).decode())}</code></details>")
        self.trail.value = trail_html(self.runtime.override_trail(execution_id))

    @guarded
    def submit(self) -> None:
        execution_id = self.queue.value
        if execution_id is None:
            raise ValueError("no pending execution selected")
        if not self.key_file.value.strip() or not self.approver_id.value.strip():
            raise ValueError("give your key file and approver id")
        request = self.runtime.override_request(execution_id)
        envelope = sign_resolution(request, Path(self.key_file.value.strip()), approver_id=self.approver_id.value.strip(),
                                   role=self.role.value or "", decision=self.decision.value, reason=self.reason.value,
                                   clock=self.runtime.clock)
        self.last = self.runtime.submit_resolution(envelope)
        self.reason.value = ""
        self.refresh()
        self.notify(f"vote recorded: {self.last.executionId} is {self.last.state} ({self.last.needed})")
