"""The teaching kit's own parts: lessons that repeat byte for byte, the flow picture, hints that fit where they appear."""

from __future__ import annotations

import json
import stat
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import parmana_lab as pl
from parmana_lab.diagram import STAGES

CLAIM = {"policyId": "claims-approval", "policyVersion": "1.0.0",
         "signals": {"insurance_active": True, "risk_score": 35, "vip_customer": False, "claim_amount": 1200}}


def lesson_run(tmp_path, name):
    with pl.Classroom("t", root=tmp_path / name) as room:
        rt = room.runtime()
        atts = [rt.execute(CLAIM), rt.execute({**CLAIM, "signals": {**CLAIM["signals"], "risk_score": 90}})]
        room.clock.advance(hours=1)
        atts.append(rt.execute({**CLAIM, "signals": {**CLAIM["signals"], "claim_amount": 99}}))
        mode = stat.S_IMODE(rt.keyring.private_key_path(rt.signer_key_id).stat().st_mode)
        return [a.canonical() for a in atts], mode, room.root


def test_a_lesson_gives_the_same_bytes_every_run_and_cleans_up(tmp_path):
    first, mode, root = lesson_run(tmp_path, "a")
    again, _, _ = lesson_run(tmp_path, "b")
    assert first == again  # ids, timestamps, keys and so signatures: all the same
    assert len(set(first)) == 3 and json.loads(first[2])["issuedAt"] == "2026-03-02T10:00:00.000Z"
    assert mode == 0o600 and not root.exists()


def test_a_lesson_starts_from_nothing_even_after_an_interrupted_run(tmp_path):
    root = tmp_path / "room"
    room = pl.Classroom("t", root=root)
    room.runtime().execute(CLAIM)
    for rt in room._open:
        rt.close()  # as a kernel that died before close() would leave it
    with pl.Classroom("t", root=root) as again:
        assert again.runtime().execute(CLAIM).execution_state == "completed"  # not a replay of the earlier run


def test_lesson_keys_are_named_not_secret_and_never_installed_twice(tmp_path):
    key = pl.lesson_key("alice")
    assert key.key_id == pl.lesson_key("alice").key_id != pl.lesson_key("bob").key_id
    assert "alice" not in repr(key) and key.key_id in repr(key)
    ring = pl.Keyring(tmp_path / "keys")
    ring.rotate(key)
    with pytest.raises(pl.KeyStoreError) as refused:
        ring.rotate(key)
    assert refused.value.code == "KEY-006"


def test_the_classroom_desk_signs_policies_that_a_runtime_with_its_authority_accepts(tmp_path):
    with pl.Classroom("t", root=tmp_path / "room") as room:
        authority = room.desk()
        rt = room.runtime(policies=room.policies, authority=authority)
        pending = rt.execute({"policyId": "vendor-payment", "policyVersion": "1.1.0", "requestedBy": "carol",
                              "signals": {"amount_cents": 4_200_000, "vendor_status": "approved", "invoice_matched": True,
                                          "currency": "EUR"}})
        request = rt.override_request(pending.executionId)
        for who in ("alice", "bob"):
            status = rt.submit_resolution(pl.sign_resolution(request, room.key_file(who), approver_id=who, role="finance",
                                                             decision="approve", reason="ok", clock=room.clock))
        assert status.state == "approved"
        assert stat.S_IMODE(room.key_file("bob").stat().st_mode) == 0o600


def test_the_flow_picture_is_valid_svg_with_the_chosen_stages_highlighted():
    picture = pl.flow_diagram(["evaluation", "signing"], caption="where <this> lesson sits")
    root = ET.fromstring(picture.svg)  # well-formed, escapes included
    ns = {"s": "http://www.w3.org/2000/svg"}
    groups = root.findall("s:g", ns)
    assert [g.get("data-stage") for g in groups] == [k for k, _ in STAGES]
    bold = [g.get("data-stage") for g in groups if g.find("s:text", ns).get("font-weight") == "bold"]
    assert bold == ["evaluation", "signing"]
    assert picture.svg == pl.flow_diagram(["evaluation", "signing"], caption="where <this> lesson sits").svg
    assert picture._repr_svg_() == picture.svg and "evaluation, signing" in repr(picture)
    with pytest.raises(ValueError, match="unknown stage"):
        pl.flow_diagram("compile")


def test_a_single_attestation_hint_never_speaks_of_an_archive(tmp_path):
    with pl.Runtime(tmp_path / "ws") as rt:
        att = rt.execute(CLAIM)
        store = rt.trust_store()
    broken = pl.verify_attestation(att.canonical()[:-2] + b"  }", store)
    assert broken.code == "MALFORMED" and "archive" not in broken.hint
    wrong = pl.verify_attestation(att, store, signals={**CLAIM["signals"], "risk_score": 36})
    assert wrong.code == "FINGERPRINT_MISMATCH" and "archive" not in wrong.hint and "given" in wrong.hint


def test_a_key_revoked_exactly_at_issuance_is_described_as_such(tmp_path):
    with pl.Runtime(tmp_path / "ws") as rt:
        att = rt.execute(CLAIM)
        rt.keyring.revoke(att.signerKeyId, at=att.issuedAt)
        result = pl.verify_attestation(att, rt.trust_store())
    assert result.code == "KEY_REVOKED" and "at or before" in result.hint and "revoked before" not in result.hint


def test_the_readme_picture_is_the_one_the_code_draws():
    from .conftest import REPO

    assert (REPO / "docs" / "img" / "flow.svg").read_text(encoding="utf-8") == pl.flow_diagram().svg  # make notebooks


def test_every_replay_state_and_every_reason_code_is_explained():
    import re

    from parmana_lab import audit, checks
    from parmana_lab.verify import ARCHIVE_HINTS

    written = {m for f in Path(audit.__file__).parent.glob("*.py")
               for m in re.findall(r"(?:state\s*=\s*|THEN |ELSE )'([A-Z_]+)'|'([A-Z_]+)', executionId", f.read_text())
               for m in m if m}
    assert written and written <= set(pl.REPLAY_STATES)  # every state the SQL writes
    assert set(pl.REPLAY_STATES) == {*audit.CONSUMED, "RESERVED", "FAILED"}
    assert set(pl.reason_codes()) == set(checks.HINTS) | set(ARCHIVE_HINTS)
    assert list(pl.reason_codes())[:2] == ["VERIFIED", checks.CODE_ORDER[0]]
