"""Archives from someone who wants the verifier to crash, hang, or say VERIFIED: each gets a precise answer.

(Path traversal, links, bombs and oversized lines are in test_archive.py;
forged and reordered records in test_verify.py.)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from parmana_lab import ArchiveError, open_archive, reproduce, verify_archive
from parmana_lab.attestation import pae
from parmana_lab.canonical import canonicalize

from .conftest import claims_request


@pytest.fixture
def small(tmp_path, policy_dir, clock):
    from parmana_lab import Runtime

    with Runtime(tmp_path / "ws", policies=policy_dir, clock=clock) as rt:
        rt.execute_many([claims_request(risk_score=r) for r in range(5)])
        path = Path(rt.export_archive(tmp_path / "archive").path)
        zipped = Path(rt.export_archive(tmp_path / "archive.zip", format="zip").path)
        tarred = Path(rt.export_archive(tmp_path / "archive.tar.gz", format="tar.gz").path)
        key, store = rt._key, rt.trust_store()
    return path, zipped, tarred, key, store


def edited(src: Path, name: str, file: str, change) -> Path:
    target = src.parent / name
    shutil.copytree(src, target)
    (target / file).write_bytes(change((target / file).read_bytes()))
    return target


def codes(report) -> tuple[dict, list]:
    s = report.summary
    return {c: n for c, n in s.codes.items() if c != "VERIFIED"}, s.archive_codes


@pytest.mark.parametrize("which", ["zip", "tar.gz"])
def test_truncated_packed_archives_are_unusable_input_with_a_message(small, tmp_path, which):
    packed = small[1] if which == "zip" else small[2]
    cut = tmp_path / f"cut.{which}"
    cut.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    with pytest.raises(ArchiveError) as info, open_archive(cut):
        pass
    assert info.value.code == "ARC-001"
    (tmp_path / "trust.json").write_text(small[4].to_json())
    out = subprocess.run([sys.executable, "-m", "parmana_lab.cli", "verify", str(cut), "--trust", str(tmp_path / "trust.json")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("parmana-lab: [") and "Traceback" not in out.stderr


def test_a_line_cut_short_is_malformed_and_the_archive_flags_it(small):
    path, *_, store = small
    cut = edited(path, "cut", "attestations.jsonl", lambda b: b[:-100])
    assert codes(verify_archive(cut, store, progress=False)) == ({"MALFORMED": 1}, ["FILE_HASH_MISMATCH", "MERKLE_ROOT_MISMATCH"])


def test_invalid_utf8_in_a_line_is_malformed_not_a_crash(small):
    path, *_, store = small
    bad = edited(path, "utf8", "attestations.jsonl", lambda b: b.replace(b'"reason":"', b'"reason":"\xff\xfe', 1))
    report = verify_archive(bad, store, progress=False)
    assert codes(report)[0] == {"MALFORMED": 1} and "UTF-8" in report.failures()[0].observed


def test_duplicate_keys_are_refused_wherever_they_appear(small):
    path, *_, store = small
    # in an attestation line: the same member twice, even with the same value
    line_dup = edited(path, "dup-att", "attestations.jsonl",
                      lambda b: re.sub(rb'"policyVersion":"1\.0\.0"', b'"policyVersion":"1.0.0","policyVersion":"1.0.0"', b, count=1))
    assert codes(verify_archive(line_dup, store, progress=False))[0] == {"MALFORMED": 1}
    # in a signals line: same value twice, so a lax parser would even get the right hash
    sig_dup = edited(path, "dup-sig", "signals.jsonl",
                     lambda b: b.replace(b'"claim_amount":8500', b'"claim_amount":8500,"claim_amount":8500', 1))
    report = verify_archive(sig_dup, store, progress=False)
    assert codes(report)[0] == {"SIGNALS_HASH_MISMATCH": 1} and "duplicate" in report.failures()[0].observed
    assert reproduce(sig_dup).to_pandas()["status"].tolist()[0] == "NOT_REPLAYABLE"
    # in the manifest
    man_dup = edited(path, "dup-man", "manifest.json", lambda b: b.replace(b'"count":5', b'"count":5,"count":6', 1))
    assert codes(verify_archive(man_dup, store, progress=False))[1] == ["MANIFEST_MALFORMED"]


def test_numbers_that_are_not_canonical(small):
    path, *_, store = small
    # an integer signal written as 8500.0 hashes like 8500 under JCS, but the kit never accepts a float signal
    floats = edited(path, "float", "signals.jsonl", lambda b: b.replace(b'"claim_amount":8500', b'"claim_amount":8.5e3', 1))
    report = verify_archive(floats, store, progress=False)
    assert codes(report) == ({"DECISION_MISMATCH": 1}, ["FILE_HASH_MISMATCH"]) and "VAL-007" in report.failures()[0].observed
    man = edited(path, "float-man", "manifest.json", lambda b: b.replace(b'"count":5', b'"count":5.0', 1))
    assert codes(verify_archive(man, store, progress=False))[1] == ["MANIFEST_MALFORMED"]
    in_line = edited(path, "num-att", "attestations.jsonl", lambda b: b.replace(b'"requires_override":false', b'"requires_override":0', 1))
    assert codes(verify_archive(in_line, store, progress=False))[0] == {"MALFORMED": 1}


def test_a_signed_manifest_that_lies_about_its_count(small):
    """The exporter's own key signs a wrong count (a buggy or dishonest exporter): the signature holds, the count does not."""
    path, _, _, key, store = small
    liar = path.parent / "liar"
    shutil.copytree(path, liar)
    manifest = json.loads((liar / "manifest.json").read_text())
    del manifest["signature"]
    manifest["count"] = 4
    import base64

    manifest["signature"] = base64.b64encode(key.sign(pae("PARMANA_ARCHIVE_V1", canonicalize(manifest)))).decode()
    (liar / "manifest.json").write_bytes(canonicalize(manifest))
    report = verify_archive(liar, store, progress=False)
    assert codes(report) == ({}, ["CHECKPOINT_INVALID", "COUNT_MISMATCH"])  # the log's checkpoint says 5, too
    check = next(c for c in report.archive_checks if c.code == "COUNT_MISMATCH")
    assert (check.expected, check.observed) == ("4", "5")
    checkpoint = next(c for c in report.archive_checks if c.code == "CHECKPOINT_INVALID")
    assert checkpoint.expected.startswith("size 4") and checkpoint.observed.startswith("size 5")


def test_garbage_files_never_raise_anything_but_archive_errors(small, tmp_path):
    path, *_, store = small
    for name, data in [("attestations.jsonl", b"\x00" * 4096), ("attestations.jsonl", b"{" * 10_000 + b"\n"),
                       ("attestations.jsonl", b"[]\n1\nnull\n\"x\"\n"), ("signals.jsonl", b"\xff" * 100),
                       ("keys.json", b"not json"), ("manifest.json", b"[1, 2]")]:
        target = edited(path, f"garbage-{name}-{len(data)}", name, lambda _b, d=data: d)
        report = verify_archive(target, store, progress=False)  # a report, never an exception
        assert report.status == "failed"
