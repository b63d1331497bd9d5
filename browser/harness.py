"""JupyterLab in headless Chromium: how the panels are driven in a real browser (``make test-browser``, ``make screenshots``).

Needs the ``browser`` extra (JupyterLab, Playwright's driver) and a Chromium at $CHROMIUM (default
/usr/bin/chromium, Debian's package). Nothing is downloaded: Playwright drives the system Chromium.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
from playwright.sync_api import Locator, Page, sync_playwright

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def write_notebook(path: Path, cells: list[str]) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server on ``root`` and one Chromium page with ``notebook`` open and its kernel idle."""

    def __init__(self, root: Path, notebook: str, *, viewport: tuple[int, int] = (1200, 3200)) -> None:
        self.root, self.notebook, self.viewport = Path(root), notebook, viewport
        self.page: Page | None = None

    def __enter__(self) -> Lab:
        settings = self.root / ".lab-settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True, exist_ok=True)
        (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._log = open(self.root / ".lab.log", "wb")  # noqa: SIM115 - closed in __exit__
        self._server = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", f"--ServerApp.root_dir={self.root}",
             "--IdentityProvider.token=", "--ServerApp.password=", "--LabApp.expose_app_in_browser=True", "--allow-root",
             f"--LabApp.user_settings_dir={self.root / '.lab-settings'}"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        try:
            self._wait_for_server()
            self._pw = sync_playwright().start()
            self._browser = self._pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            width, height = self.viewport
            self.page = self._browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
            self.page.goto(f"{self.url}/lab/tree/{self.notebook}")
            self.page.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=90_000)
            self.wait_idle()
            self.command("application:toggle-left-area")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_for_server(self) -> None:
        for _ in range(240):
            if self._server.poll() is not None:
                raise RuntimeError(f"JupyterLab exited ({self._server.returncode}); see {self.root / '.lab.log'}")
            try:
                urllib.request.urlopen(self.url + "/api", timeout=1)
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"JupyterLab did not answer on {self.url} in 120 s; see {self.root / '.lab.log'}")

    def command(self, name: str) -> None:
        self.page.evaluate(f"window.jupyterapp.commands.execute({name!r})")

    def wait_idle(self, timeout: float = 120_000) -> None:
        self.page.wait_for_function(
            "window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel?.status === 'idle'", timeout=timeout)

    def run_all(self) -> None:
        self.command("notebook:run-all-cells")

    def errors(self) -> list[str]:
        """Tracebacks and widget rendering errors shown anywhere in the notebook."""
        return self.page.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.stderr'], "
                                 ".jp-OutputArea-output:has-text('Error displaying widget')").all_inner_texts()

    def panel(self, css_class: str, timeout: float = 180_000) -> Locator:
        found = self.page.locator(f".{css_class}")
        found.wait_for(timeout=timeout)
        return found

    def __exit__(self, *exc: object) -> None:
        for close in (lambda: self._browser.close(), lambda: self._pw.stop()):
            try:
                close()
            except Exception:  # noqa: BLE001 - half-started: nothing more to close
                pass
        self._server.terminate()
        try:
            self._server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._server.kill()
        self._log.close()
