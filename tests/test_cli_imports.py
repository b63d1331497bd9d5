"""Commands import only what they use: a quick start for `verify`, `keys`, `runtime`, `policies` and `log verify`.

Each command runs in a fresh interpreter that then lists the heavy packages it loaded.
"""

import json
import subprocess
import sys

import pytest

from parmana_lab import Runtime

from .conftest import REPO, claims_request

HEAVY = {"duckdb", "pandas", "matplotlib", "ipywidgets", "IPython", "tqdm", "cryptography",
         "multiprocessing", "concurrent"}  # worker pools: only for --workers 2 and more
PRIVATE_KEYS = {"cryptography"}  # reading a private key (PKCS#8) needs it; nothing that only checks signatures does
PROBE = """
import sys
from parmana_lab.cli import main
code = main(sys.argv[1:])
print("LOADED", sorted({m.split('.')[0] for m in sys.modules} & HEAVY))
raise SystemExit(code)
""".replace("HEAVY", repr(HEAVY))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("imports")
    with Runtime(tmp / "ws") as rt:
        att = rt.execute(claims_request())
        archive = rt.export_archive(tmp / "archive.zip", format="zip").path
        (tmp / "trust.json").write_text(rt.trust_store().to_json())
        (tmp / "proof").write_text(rt.log.prove(att.executionId, rt.log.checkpoint()).render())
    return tmp, archive


def loaded(*args, code=0):
    out = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == code, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("LOADED "))
    return set(json.loads(line[7:].replace("'", '"')))


def test_verify_and_the_light_commands_load_no_heavy_package(exported):
    tmp, archive = exported
    for args in (("verify", archive, "--trust", tmp / "trust.json", "--json"),
                 ("verify", archive, "--trust", tmp / "trust.json", "--no-progress"),
                 ("--workspace", tmp / "ws", "keys", "--json"),
                 ("runtime", "--json"),
                 ("policies", "--json"),
                 ("log", "verify", tmp / "proof", "--trust", tmp / "trust.json")):
        assert loaded(*args) == set(), args


def test_the_probe_sees_a_heavy_import_when_there_is_one(exported):
    tmp, archive = exported
    assert "duckdb" in loaded("audit", "replays", archive)  # replay detection is DuckDB SQL: it must show up
    assert "multiprocessing" in loaded("verify", archive, "--trust", tmp / "trust.json", "--no-progress", "--workers", "2")
