"""Private keys stay private: 0600 on disk, and in no archive, report, repr, log line, DB row or error message."""

from __future__ import annotations

import base64
import logging
import os
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from parmana_lab import Runtime, find_replays, reproduce, verify_archive
from parmana_lab.widgets import AttestationInspector, ExecutionForm, VerificationDashboard

from .conftest import claims_request, sample_requests


def secret_forms(runtime: Runtime) -> list[bytes]:
    """Every way the private key could leak: its PEM body, raw seed (hex, base64) and the seed+public key form."""
    pem = runtime.keyring.private_key_path(runtime.signer_key_id).read_bytes()
    body = b"".join(pem.splitlines()[1:-1])
    seed = bytes(runtime._key._key)
    expanded = runtime._key._key._signing_key  # libsodium's 64-byte form: seed || public key
    return [body, seed, seed.hex().encode(), base64.b64encode(seed), base64.b64encode(expanded)[:40], expanded]


def leaks(blob: bytes, secrets: list[bytes]) -> list[int]:
    return [i for i, s in enumerate(secrets) if s in blob]


def tree_bytes(path: Path) -> bytes:
    if path.is_dir():
        return b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path) as z:
            return b"".join(z.read(n) for n in z.namelist())
    with tarfile.open(path) as t:
        return b"".join(t.extractfile(m).read() for m in t.getmembers() if m.isfile())


def test_private_keys_never_leave_the_keys_folder(tmp_path, policy_dir, clock, caplog):
    caplog.set_level(logging.DEBUG)
    ws = tmp_path / "ws"
    texts: list[bytes] = []
    with Runtime(ws, policies=policy_dir, clock=clock) as rt:
        secrets = secret_forms(rt)
        assert leaks(rt.keyring.private_key_path(rt.signer_key_id).read_bytes(), secrets) == [0]  # the detector works
        old = rt.signer_key_id
        for request in sample_requests()[:5]:
            rt.execute(request)
        rt.rotate_key()  # two private keys now; check both
        secrets += secret_forms(rt)
        results = rt.execute_many([*sample_requests()[5:], claims_request(risk_score="high"), sample_requests()[0]])
        texts += [repr(r).encode() + str(r).encode() for r in results]
        att = next(r for r in results if not isinstance(r, Exception))
        archives = [Path(rt.export_archive(tmp_path / name, format=fmt).path)
                    for name, fmt in (("a", "dir"), ("a.zip", "zip"), ("a.tar.gz", "tar.gz"))]
        texts += [repr(rt).encode(), repr(rt.keyring).encode(), repr(rt.db).encode(), rt.trust_store().to_json().encode()]
        texts += [ExecutionForm(rt).__repr__().encode(), AttestationInspector(att, rt.trust_store()).__repr__().encode()]
        inspector = AttestationInspector(att, rt.trust_store())
        texts += [c.value.encode() for c in inspector.children[1].children]
        for table in ("attestations", "signals", "replay", "refusals", "policies"):
            texts.append(rt.db.sql(f"SELECT * FROM {table}").to_csv().encode())
        store = rt.trust_store()
    for archive in archives:
        assert leaks(tree_bytes(archive), secrets) == [], archive
        names = [p.name for p in archives[0].rglob("*")]
        assert not any(n.endswith(".pem") for n in names)
    report = verify_archive(archives[0], store, progress=False)
    texts += [report.to_html().encode(), report.to_markdown().encode(), report.to_pandas().to_csv().encode(), repr(report).encode()]
    texts += [reproduce(archives[1]).to_html().encode()]
    with find_replays(archives) as replays:
        texts += [replays.to_markdown().encode(), replays.to_pandas().to_csv().encode()]
    dash = VerificationDashboard([archives[2]], store)
    texts += [repr(dash).encode(), dash.summary.value.encode(), dash.table.value.encode()]
    texts += [r.getMessage().encode() for r in caplog.records]
    assert [i for i, t in enumerate(texts) if leaks(t, secrets)] == []

    # every CLI command's output, errors included
    cli_out = b""
    for args in (["keys"], ["keys", "--json"], ["runtime", "--json"], ["policies", "--policies", str(policy_dir)],
                 ["verify", str(archives[0]), "--json"], ["audit", "replays", str(archives[1])],
                 ["audit", "reproduce", str(ws / "audit.duckdb"), "--json"], ["run", "--policies", str(policy_dir), "/nonexistent"],
                 ["keys", "revoke", "nope"]):
        out = subprocess.run([sys.executable, "-m", "parmana_lab.cli", "--workspace", str(ws), *args], capture_output=True)
        cli_out += out.stdout + out.stderr
    assert leaks(cli_out, secrets) == []

    # on disk: 0600 files in a 0700 folder, and an exposed one is refused with a message that names the file, not its content
    keys = ws / "keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    pems = sorted(keys.glob("*.pem"))
    assert len(pems) == 2 and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in pems)
    active = next(p for p in pems if not p.name.startswith(old))
    os.chmod(active, 0o640)
    out = subprocess.run([sys.executable, "-m", "parmana_lab.cli", "--workspace", str(ws), "run", "/nonexistent"], capture_output=True)
    assert b"[KEY-003@keys]" in out.stderr and leaks(out.stdout + out.stderr, secrets) == []
    os.chmod(active, 0o600)
    active.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")  # damaged: the error must not echo it
    out = subprocess.run([sys.executable, "-m", "parmana_lab.cli", "--workspace", str(ws), "run", "/nonexistent"], capture_output=True)
    assert b"[KEY-002@keys]" in out.stderr and b"not a key" not in out.stderr
