"""Every panel rendered by JupyterLab in headless Chromium, and one real interaction each (``make test-browser``).

The kernel builds a classroom (fixed clock, ids and keys), so what the panels show is the same every run.
Inputs are typed, options picked and buttons clicked in the page, as a person would; the checks read the page.
Screenshots of each panel after its interaction go to $PARMANA_BROWSER_ARTIFACTS (default build/browser).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from .harness import Lab, write_notebook

ARTIFACTS = Path(os.environ.get("PARMANA_BROWSER_ARTIFACTS", Path(__file__).resolve().parent.parent / "build" / "browser"))

SETUP = """
import json, shutil
from pathlib import Path
import parmana_lab as pl
from parmana_lab.widgets import *

room = pl.Classroom("browser", root=Path.cwd() / "room")
authority = room.desk()
rt = room.runtime("runtime", policies=room.policies, authority=authority)
samples = pl.default_requests_dir()
requests = [r for f in sorted(samples.glob("*.json")) if f.name not in ("replayed.json", "invalid.json")
            for r in json.loads(f.read_text())]
rt.execute_many(requests)
archive = Path(rt.export_archive(room.root / "branch-a").path)
bad = room.root / "tampered"
shutil.copytree(archive, bad)
lines = (bad / "attestations.jsonl").read_bytes().splitlines()
att = json.loads(lines[4]); att["decision"]["action"] = "approve" if att["decision"]["action"] != "approve" else "reject"
lines[4] = pl.canonicalize(att)
(bad / "attestations.jsonl").write_bytes(b"\\n".join(lines) + b"\\n")
(room.root / "trust.json").write_text(rt.trust_store().to_json())
other = room.runtime("other")
other.execute_many(json.loads((samples / "claims-approval.json").read_text()))
archive_b = other.export_archive(room.root / "branch-b.zip", format="zip").path
payment = rt.execute({"policyId": "vendor-payment", "policyVersion": "1.1.0", "requestedBy": "carol",
                      "signals": {"amount_cents": 4_200_000, "vendor_status": "approved", "invoice_matched": True,
                                  "currency": "EUR"}})
rt.submit_resolution(pl.sign_resolution(rt.override_request(payment.executionId), room.key_file("alice"), approver_id="alice",
                                        role="finance", decision="approve", reason="matches PO-7", clock=room.clock))
first = rt.db.sql("SELECT canonical FROM attestations ORDER BY seq LIMIT 1")["canonical"][0]
print("ready", payment.executionId)
"""

PANELS = {
    "execution-form": "ExecutionForm(rt)",
    "verification-dashboard": "VerificationDashboard()",
    "replay-explorer": "ReplayExplorer([archive, archive_b])",
    "override-panel": "OverridePanel(rt, key_file=room.key_file('bob'), approver_id='bob')",
    "attestation-inspector": "AttestationInspector(first, rt.trust_store())",
    "reproducibility-panel": "ReproducibilityPanel(policies=room.policies)",
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    cells = [SETUP, *(f"panel = {code}\npanel.add_class('panel-{name}')\npanel" for name, code in PANELS.items())]
    write_notebook(root / "panels.ipynb", cells)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with Lab(root, "panels.ipynb") as running:
        running.run_all()
        for name in PANELS:
            running.panel(f"panel-{name}")
        running.wait_idle()
        yield running
    assert (root / "room").is_dir()


def widget(panel, kind: str, label: str):
    """The input of the ipywidget whose description is ``label`` (kind: text, textarea, dropdown, select...)."""
    return panel.locator(f".widget-{kind}:has(> label:text-is('{label}'))").locator("input, textarea, select").first


def shot(panel, name: str) -> None:
    panel.scroll_into_view_if_needed()
    panel.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def test_every_panel_renders_its_widgets_without_errors(lab):
    assert lab.errors() == []
    for name in PANELS:
        panel = lab.panel(f"panel-{name}")
        assert panel.locator("h3").first.inner_text().strip(), name  # the heading
        assert panel.locator("button").count() >= 1, name
        assert panel.locator("input, select, textarea").count() >= 1, name


def test_the_execution_form_runs_what_was_typed_and_shows_the_attestation(lab):
    form = lab.panel("panel-execution-form")
    widget(form, "dropdown", "policy").select_option("loan-approval")
    widget(form, "dropdown", "version").select_option("1.1.0")
    for name, value in (("credit_score", "701"), ("loan_amount", "1234567")):  # values no sample request used
        box = widget(form, "text", name)
        box.fill(value)
        box.press("Tab")
    form.locator(".widget-checkbox:has-text('employed') input").check()
    form.get_by_role("button", name="Execute").click()
    form.locator("text=signature and content checks").wait_for(timeout=30_000)
    text = form.inner_text()
    assert "signature and content checks: verified VERIFIED" in " ".join(text.split()), text
    assert "attested" in form.locator("table").last.inner_text()  # this session's history
    shot(form, "execution-form")


def test_the_dashboard_verifies_typed_paths_and_shows_table_and_chart(lab):
    dash = lab.panel("panel-verification-dashboard")
    root = lab.root / "room"
    widget(dash, "textarea", "archives").fill(f"{root / 'branch-a'}\n{root / 'tampered'}")
    trust = widget(dash, "text", "trust store")
    trust.fill(str(root / "trust.json"))
    trust.press("Tab")
    dash.get_by_role("button", name="Verify").click()
    dash.locator("img").first.wait_for(timeout=60_000)  # the chart
    dash.locator("td", has_text="SIGNATURE_INVALID").first.wait_for(timeout=30_000)  # in the table, not the filter
    text = dash.inner_text()
    assert "SIGNATURE_INVALID" in text and "tampered" in text
    assert dash.locator("table").count() >= 1
    shot(dash, "verification-dashboard")


def test_picking_a_replayed_fingerprint_shows_where_it_occurred(lab):
    explorer = lab.panel("panel-replay-explorer")
    picker = widget(explorer, "select", "replayed")
    options = picker.locator("option").all_inner_texts()
    assert options, "no replayed fingerprint listed"
    picker.select_option(index=len(options) - 1)
    explorer.locator("text=branch-b").first.wait_for(timeout=30_000)
    assert "branch-a" in explorer.inner_text()
    shot(explorer, "replay-explorer")


def test_approving_in_the_override_panel_completes_the_two_person_rule(lab):
    panel = lab.panel("panel-override-panel")
    queue = widget(panel, "select", "executions")
    texts = [" ".join(t.split()) for t in queue.locator("option").all_inner_texts()]  # the browser shows spaces as nbsp
    index = next((i for i, t in enumerate(texts) if "vendor-payment 1.1.0" in t and "(1 approve" in t), None)
    assert index is not None, texts
    queue.select_option(index=index)
    panel.locator("text=second-approver").first.wait_for(timeout=30_000)
    reason = widget(panel, "textarea", "reason")
    reason.fill("second check: invoice and PO agree")
    reason.press("Tab")
    panel.get_by_role("button", name="Approve").click()
    panel.get_by_role("button", name="Sign and submit").click()
    panel.locator("text=vote recorded").wait_for(timeout=30_000)
    status = " ".join(panel.locator("text=vote recorded").inner_text().split())
    assert re.search(r"vote recorded: \S+ is approved", status), status
    panel.locator(".widget-checkbox:has-text('include resolved') input").check()  # resolved ones leave the queue otherwise
    queue.locator("option").filter(has_text=re.compile(r"^\s*approved")).first.wait_for(timeout=30_000)  # the kernel's refresh
    texts = [" ".join(t.split()) for t in queue.locator("option").all_inner_texts()]
    queue.select_option(index=next(i for i, t in enumerate(texts) if t.startswith("approved") and "vendor-payment 1.1.0" in t))
    panel.locator("text=approve bob (finance)").wait_for(timeout=30_000)  # its trail: both votes and the outcome
    assert "approve alice (finance)" in panel.inner_text()
    shot(panel, "override-panel")


def test_tampering_in_the_inspector_shows_signature_invalid(lab):
    inspector = lab.panel("panel-attestation-inspector")
    widget(inspector, "dropdown", "field").select_option("decision.action")
    value = widget(inspector, "text", "new value")
    value.fill('"reject"')
    value.press("Tab")
    inspector.get_by_role("button", name="Tamper and verify").click()
    inspector.locator("text=SIGNATURE_INVALID").first.wait_for(timeout=30_000)
    shot(inspector, "attestation-inspector")


def test_re_running_in_the_reproducibility_panel_shows_every_match(lab):
    panel = lab.panel("panel-reproducibility-panel")
    assert "MATCH" not in panel.inner_text()  # nothing run yet: the source is typed below
    source = widget(panel, "text", "source")
    source.fill(str(lab.root / "room" / "branch-a"))
    source.press("Tab")
    panel.get_by_role("button", name="Re-run").click()
    panel.locator("text=MATCH").first.wait_for(timeout=60_000)
    assert "DIVERGED" in panel.inner_text()  # the counts of every status are shown
    shot(panel, "reproducibility-panel")
