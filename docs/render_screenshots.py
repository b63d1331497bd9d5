"""Render the README's widget screenshots in a real JupyterLab (``make screenshots``).

Needs JupyterLab and Playwright in the venv (``make screenshots`` installs them)
and a Chromium at $CHROMIUM (default /usr/bin/chromium, Debian's package).
Writes docs/img/*.png. Not part of ``make test``: it is how the pictures were made.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nbformat
from playwright.sync_api import sync_playwright

OUT = Path(__file__).resolve().parent / "img"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

SETUP = """
import json, shutil, tempfile
from pathlib import Path
import parmana_lab as pl
from parmana_lab.widgets import *

workspace = Path(tempfile.mkdtemp(prefix="parmana-shots-"))
samples = pl.default_requests_dir()
requests = [r for f in sorted(samples.glob("*.json")) if f.name not in ("replayed.json", "invalid.json")
            for r in json.loads(f.read_text())]
rt = pl.Runtime(workspace / "a")
rt.execute_many(requests)
archive = Path(rt.export_archive(workspace / "branch-a").path)
bad = workspace / "tampered"
shutil.copytree(archive, bad)
lines = (bad / "attestations.jsonl").read_bytes().splitlines()
att = json.loads(lines[4]); att["decision"]["action"] = "approve" if att["decision"]["action"] != "approve" else "reject"
lines[4] = pl.canonicalize(att)
del lines[9]
(bad / "attestations.jsonl").write_bytes(b"\\n".join(lines) + b"\\n")
with pl.Runtime(workspace / "b") as other:
    other.execute_many(json.loads((samples / "claims-approval.json").read_text()))
    archive_b = other.export_archive(workspace / "branch-b.zip", format="zip").path
"""

SHOTS = {
    "execution-form": """
form = ExecutionForm(rt)
form.policy.value, form.version.value = "loan-approval", "1.1.0"
form.set_signals(credit_score=690, loan_amount=1_200_000, employed=True)
form.execute_button.click()
form.add_class("shot-execution-form")
form
""",
    "verification-dashboard": """
dash = VerificationDashboard([archive, bad], rt.trust_store())
dash.code_filter.value = "SIGNATURE_INVALID"
dash.detail_picker.value = dash.detail_picker.options[0][1]
dash.add_class("shot-verification-dashboard")
dash
""",
    "replay-explorer": """
explorer = ReplayExplorer([archive, archive_b])
explorer.add_class("shot-replay-explorer")
explorer
""",
    "attestation-inspector": """
first = rt.db.sql("SELECT canonical FROM attestations ORDER BY seq LIMIT 1")["canonical"][0]
inspector = AttestationInspector(first, rt.trust_store())
inspector.field.value, inspector.value.value = "decision.action", '"reject"'
inspector.tamper_button.click()
inspector.add_class("shot-attestation-inspector")
inspector
""",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as root:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(SETUP), *map(nbformat.v4.new_code_cell, SHOTS.values())])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, Path(root) / "tour.ipynb")
        settings = Path(root) / "settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True)
        (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
        port = free_port()
        lab = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", f"--ServerApp.root_dir={root}",
             "--IdentityProvider.token=", "--ServerApp.password=", "--LabApp.expose_app_in_browser=True", "--allow-root",
             f"--LabApp.user_settings_dir={Path(root) / 'settings'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(120):
                try:
                    urllib.request.urlopen(url + "/api", timeout=1)
                    break
                except OSError:
                    time.sleep(0.5)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync"])
                page = browser.new_page(viewport={"width": 1100, "height": 3000}, device_scale_factor=1)
                page.goto(f"{url}/lab/tree/tour.ipynb")
                page.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=60_000)
                page.wait_for_function("window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel?.status === 'idle'",
                                       timeout=60_000)
                page.evaluate("window.jupyterapp.commands.execute('application:toggle-left-area')")
                page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
                for name in SHOTS:
                    shot = page.locator(f".shot-{name}")
                    shot.wait_for(timeout=120_000)
                    page.wait_for_timeout(1500)  # images and tables settle
                    shot.scroll_into_view_if_needed()
                    shot.screenshot(path=str(OUT / f"{name}.png"))
                    print("wrote", OUT / f"{name}.png")
                browser.close()
        finally:
            lab.terminate()
            lab.wait(timeout=30)


if __name__ == "__main__":
    main()
