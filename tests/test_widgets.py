"""The notebook panels, driven as a person would: set values, click, pick rows, read what they show."""

from __future__ import annotations

import json
import shutil
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import ipywidgets as w
import pytest

from parmana_lab import Decision, Runtime, evaluate
from parmana_lab.canonical import canonicalize
from parmana_lab.widgets import (
    AttestationInspector,
    ExecutionForm,
    ReplayExplorer,
    ReproducibilityPanel,
    VerificationDashboard,
)

from .conftest import claims_request, loan_request


def tamper_line(archive: Path, index: int, edit) -> None:
    path = archive / "attestations.jsonl"
    lines = path.read_bytes().splitlines()
    item = json.loads(lines[index])
    edit(item)
    lines[index] = canonicalize(item)
    path.write_bytes(b"\n".join(lines) + b"\n")


# -- ExecutionForm ---------------------------------------------------------------------------


def test_form_inputs_follow_the_signals_schema(runtime):
    form = ExecutionForm(runtime)
    assert form.policy.options == ("access-request", "claims-approval", "loan-approval", "vendor-payment")
    form.policy.value = "access-request"
    kinds = {box.description: type(box) for box in form.inputs.children}
    policy = runtime.policies.get("access-request", "1.0.0")
    expected = {"integer": w.IntText, "boolean": w.Checkbox, "enum": w.Dropdown, "string": w.Text}
    assert kinds == {name: expected[spec.type] for name, spec in policy.signalsSchema.items()}
    enum = next(name for name, spec in policy.signalsSchema.items() if spec.type == "enum")
    box = next(b for b in form.inputs.children if b.description == enum)
    assert box.options == policy.signalsSchema[enum].values
    form.policy.value = "loan-approval"
    assert form.version.options == ("1.0.0", "1.1.0", "1.2.0") and form.version.value == "1.2.0"  # newest first chosen
    assert {b.description for b in form.inputs.children} == {"credit_score", "loan_amount", "employed"}


def test_form_execute_shows_the_attestation_then_the_replay_refusal(runtime):
    form = ExecutionForm(runtime)
    form.policy.value, form.version.value = "loan-approval", "1.0.0"
    form.set_signals(credit_score=742, loan_amount=2_500_000, employed=True)
    form.execute_button.click()
    att = form.last
    assert att.decision.action == "approve"
    assert att.executionId in form.result.value and "approve" in form.result.value and "VERIFIED" in form.result.value
    assert runtime.db.sql("SELECT count(*) AS n FROM attestations")["n"][0] == 1
    form.execute_button.click()  # the same signals again: the fingerprint is already consumed
    assert form.last.code == "INV-013"
    assert "INV-013" in form.result.value and "Replay detected" in form.result.value
    assert "Traceback" not in form.result.value
    history = form.history_frame()
    assert history["outcome"].tolist() == ["attested", "refused"] and history["code"].tolist() == ["VERIFIED", "INV-013"]
    assert "INV-013" in form.history_table.value
    assert repr(form) == "ExecutionForm(loan-approval 1.0.0; 2 executions this session, 1 attested, 1 refused)"


def test_form_shows_a_validation_refusal_with_its_code(runtime):
    form = ExecutionForm(runtime)
    form.policy.value, form.version.value = "claims-approval", "1.0.0"
    form.set_signals(claim_amount=2**60)  # beyond the integers JSON carries exactly
    form.execute_button.click()
    assert form.last.code.startswith("VAL-") and form.last.code in form.result.value
    with pytest.raises(KeyError, match="no signal 'nope'"):
        form.set_signals(nope=1)


def test_form_says_why_a_policy_is_missing_from_the_list(tmp_path, policy_dir):
    (policy_dir / "broken" / "1.0.0").mkdir(parents=True)
    (policy_dir / "broken" / "1.0.0" / "policy.json").write_text('{"policyId": "broken"')
    with Runtime(tmp_path / "ws", policies=policy_dir) as rt:
        form = ExecutionForm(rt)
    assert "broken" not in form.policy.options and "loan-approval" in form.policy.options
    assert form.error.code.startswith("POL-") and "broken" in form.status.value


def test_form_with_no_policies_says_so(tmp_path):
    (tmp_path / "empty").mkdir()
    with Runtime(tmp_path / "ws", policies=tmp_path / "empty") as rt:
        form = ExecutionForm(rt)
        assert "no loadable policies" in form.status.value
        form.execute_button.click()  # nothing chosen: a message, not a traceback
        assert "choose a policy" in form.status.value and form.history == []


# -- VerificationDashboard -----------------------------------------------------------------


@pytest.fixture
def two_archives(exported, tmp_path):
    clean, store = exported
    bad = tmp_path / "tampered"
    shutil.copytree(clean, bad)
    tamper_line(bad, 2, lambda a: a["decision"].update(action="approve"))
    return clean, bad, store


def test_dashboard_verifies_filters_and_explains(two_archives):
    clean, bad, store = two_archives
    dash = VerificationDashboard([clean, bad], store)  # everything given: runs at once
    assert [r.status for r in dash.reports] == ["verified", "failed"]
    assert dash.progress.value == dash.progress.max == 15  # the last archive's bar ran to its end
    assert "SIGNATURE_INVALID" in dash.summary.value or "FILE_HASH_MISMATCH" in dash.summary.value
    assert dash.chart.value.startswith("<img")
    assert set(dash.code_filter.options) == {"all codes", "VERIFIED", "SIGNATURE_INVALID"}
    assert len(dash.detail_picker.options) == 30
    dash.code_filter.value = "SIGNATURE_INVALID"
    assert dash.filtered()["line"].tolist() == [3] and dash.filtered()["archive"].tolist() == [str(bad)]
    assert len(dash.detail_picker.options) == 1
    dash.detail_picker.value = dash.detail_picker.options[0][1]
    assert "SIGNATURE_INVALID" in dash.detail.value and "signature: failed" in dash.detail.value
    dash.code_filter.value = "all codes"
    eid = dash.frame["executionId"][0]
    dash.search.value = eid[:13]
    assert dash.filtered()["executionId"].tolist() == [eid, eid]  # the same record in both archives
    assert repr(dash) == f"VerificationDashboard({clean} VERIFIED 15/15; {bad} FAILED 14/15)"


def test_dashboard_trust_file_upload_and_errors(two_archives, tmp_path):
    clean, _, store = two_archives
    dash = VerificationDashboard()
    dash.run_button.click()
    assert "choose at least one archive" in dash.status.value and dash.reports == []
    dash.paths.value = str(clean)
    dash.run_button.click()
    assert "choose a trust store" in dash.status.value
    trust = tmp_path / "trust.json"
    trust.write_text(store.to_json())
    dash.trust_path.value = str(trust)
    dash.paths.value = str(tmp_path / "missing")
    dash.run_button.click()
    assert "ARC-" in dash.status.value and "Traceback" not in dash.status.value
    packed = tmp_path / "packed.zip"
    with zipfile.ZipFile(packed, "w") as z:
        for f in sorted(clean.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(clean).as_posix())
    dash.paths.value = ""
    dash.upload.value = ({"name": "../../packed.zip", "type": "application/zip", "size": packed.stat().st_size,
                          "content": memoryview(packed.read_bytes()), "last_modified": datetime.now(timezone.utc)},)
    uploaded = Path(dash.paths.value)
    assert uploaded.name == "packed.zip" and uploaded.parent != tmp_path and uploaded.is_file()
    dash.run_button.click()
    assert [r.status for r in dash.reports] == ["verified"] and dash.error is None


def test_dashboard_without_trust_flags_unknown_keys(two_archives):
    clean, _, _ = two_archives
    from parmana_lab import TrustStore

    dash = VerificationDashboard([clean], TrustStore())  # no keys: nothing could be checked, said as such
    assert "KEY-004" in dash.status.value and dash.reports == []
    dash.trust_archive_keys.value = True
    dash.run_button.click()
    assert set(dash.frame["code"]) == {"VERIFIED"} and "keys.json" in dash.summary.value


# -- ReplayExplorer -------------------------------------------------------------------------


def test_replay_explorer_finds_a_replay_across_runtimes(tmp_path, policy_dir, clock):
    paths = []
    for name in ("runtime-a", "runtime-b"):
        with Runtime(tmp_path / name, policies=policy_dir, clock=clock) as rt:
            rt.execute(claims_request())
            rt.execute(loan_request(score=600 if name == "runtime-a" else 610))
            paths.append(rt.export_archive(tmp_path / f"{name}.zip", format="zip").path)
            clock.advance(30)
    explorer = ReplayExplorer(paths)
    assert explorer.report.summary.replayed_fingerprints == 1
    assert len(explorer.fingerprints.options) == 1 and f"{paths[0]}, {paths[1]}" in explorer.fingerprints.options[0][0]
    side = explorer.occurrences_of(explorer.fingerprints.value)
    assert list(side.columns) == ["execution 1", "execution 2"]
    assert side.loc["source"].tolist() == [str(p) for p in paths] and side.loc["also_in"].tolist() == ["-", "-"]
    assert side.loc["signerKeyId"].nunique() == 2  # two runtimes, two keys
    assert "execution 2" in explorer.occurrences.value and explorer.chart.value.startswith("<img")
    assert repr(explorer) == "ReplayExplorer(2 sources, 4 records, 1 replayed fingerprints)"
    explorer.sources.value = str(paths[0])
    explorer.run_button.click()
    assert explorer.fingerprints.options == () and "no replayed fingerprints" in explorer.status.value
    explorer.sources.value = str(tmp_path / "nope.zip")
    explorer.run_button.click()
    assert "ARC-" in explorer.status.value and explorer.report.summary.records == 2  # the last good report stays
    explorer.close()


# -- ReproducibilityPanel -------------------------------------------------------------------


def stricter(policy, signals):
    """An evaluator build that never auto-approves: a deliberate behaviour change."""
    decision = evaluate(policy, signals)
    if decision.action != "approve":
        return decision
    return Decision(action="manual_review", requires_override=True, reason="Needs an underwriter", ruleId="manual-review")


def test_reproducibility_panel_diff_and_what_if(tmp_path, policy_dir, clock):
    with Runtime(tmp_path / "ws", policies=policy_dir, clock=clock) as rt:
        for score in (450, 650, 720, 750):
            rt.execute(loan_request(score=score))
        archive = rt.export_archive(tmp_path / "archive").path
    same = ReproducibilityPanel(archive, policies=policy_dir)
    assert same.report.summary.statuses["MATCH"] == 4 and same.diverged.options == ()
    assert same.progress.value == same.progress.max == 4 and same.progress.layout.visibility == "visible"
    panel = ReproducibilityPanel(archive, policies=policy_dir, evaluator=stricter)
    assert repr(panel) == "ReproducibilityPanel(MATCH 2, DIVERGED 2, NOT_REPLAYABLE 0, INPUT_MISMATCH 0)"
    assert len(panel.diverged.options) == 2
    panel.diverged.value = panel.diverged.options[0][1]
    assert "manual_review" in panel.diff.value and "execution_state" in panel.diff.value
    panel.evaluator = evaluate
    panel.what_if_policy.value = "loan-approval"
    assert panel.what_if_version.options == ("1.0.0", "1.1.0", "1.2.0")
    panel.what_if_version.value = "1.1.0"
    panel.what_if_button.click()
    changes = panel.what_if_report.changes()
    assert len(changes) >= 1 and set(changes["replayedWith"]) == {"loan-approval 1.1.0"}
    assert f"{len(changes)} of 4 decisions would change" in panel.changes.value


def test_reproducibility_panel_reports_bad_sources(tmp_path):
    panel = ReproducibilityPanel(tmp_path / "nothing-here")
    assert panel.report is None and panel.error is not None and "Traceback" not in panel.status.value
    panel.source.value = ""
    panel.run_button.click()
    assert "give an archive" in panel.status.value


# -- AttestationInspector -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("decision.action", '"reject"', "SIGNATURE_INVALID"),
        ("issuedAt", '"2026-01-15T09:31:00.000Z"', "SIGNATURE_INVALID"),
        ("signature", '"not base64"', "MALFORMED"),
        ("signerKeyId", '"0000000000000000"', "KEY_UNKNOWN"),
        ("decision.requires_override", "1", "MALFORMED"),
        ("signalsHash", '"' + "0" * 64 + '"', "SIGNATURE_INVALID"),
    ],
)
def test_inspector_teaching_mode(runtime, field, value, code):
    request = claims_request()
    att = runtime.execute(request)
    policy = runtime.policies.get("claims-approval", "1.0.0")
    inspector = AttestationInspector(att, runtime.trust_store(), signals=request["signals"], policy=policy)
    assert inspector.original.code == "VERIFIED"
    inspector.field.value = field
    assert json.loads(inspector.value.value) == inspector.current(field)  # prefilled with the current value
    inspector.value.value = value
    inspector.tamper_button.click()
    assert inspector.tampered.code == code and code in inspector.outcome.value
    assert repr(inspector) == f"AttestationInspector({att.executionId}: VERIFIED; tampered: {code})"
    inspector.reset_button.click()
    assert inspector.tampered is None and inspector.outcome.value == ""


def test_inspector_shows_the_signed_bytes_and_refuses_bad_json(runtime):
    att = runtime.execute(claims_request())
    inspector = AttestationInspector(att.canonical(), runtime.trust_store())  # a line from an archive works too
    tabs = inspector.children[1]
    assert [tabs.get_title(i) for i in range(4)] == ["fields", "payload (JCS)", "signed bytes (PAE)", "verification"]
    assert att.execution_fingerprint in tabs.children[1].value
    assert "DSSEv1 22 PARMANA_ATTESTATION_V1" in tabs.children[2].value
    assert f"{len(att.signing_message())} bytes" in tabs.children[2].value
    inspector.value.value = "reject"  # not JSON: the quotes are missing
    inspector.tamper_button.click()
    assert "must be JSON" in inspector.status.value and inspector.tampered is None
    inspector.value.value = '"approve"'
    inspector.tamper_button.click()
    assert "the signed bytes are unchanged" in inspector.outcome.value and inspector.tampered.code == "VERIFIED"
    inspector.value.value = '"reject"'
    inspector.tamper_button.click()
    assert "the signed payload now differs from byte" in inspector.outcome.value
    size = len(canonicalize(att.body()))
    assert f"changes too ({size} → {size - 1})" in inspector.outcome.value  # "approve" -> "reject"


def test_inspector_without_trust_store_cannot_vouch(runtime):
    att = runtime.execute(claims_request())
    assert AttestationInspector(att).original.code == "KEY_UNKNOWN"
