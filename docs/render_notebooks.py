"""Re-run every notebook (lessons and solutions) from a clean kernel and store it with its outputs (``make notebooks``).

The lessons run in a Classroom (a clock that stands still, numbered ids, keys derived from names), so unchanged code
gives unchanged outputs and the stored notebooks can be previewed before anyone runs them. Widget views are stored
as their plain-text form: a stored notebook has no live kernel for them to talk to.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _plain(nb: nbformat.NotebookNode) -> None:
    """Drop what changes from run to run without meaning anything: widget view ids, per-cell timings, and where
    the kernel happened to split one cell's printed text into several messages."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        merged: list = []
        for out in cell.get("outputs", []):
            if WIDGET_VIEW in out.get("data", {}):
                del out["data"][WIDGET_VIEW]
            if out["output_type"] == "stream" and merged and merged[-1]["output_type"] == "stream" \
                    and merged[-1]["name"] == out["name"]:
                merged[-1]["text"] = "".join(merged[-1]["text"]) + "".join(out["text"])
            else:
                merged.append(out)
        if "outputs" in cell:
            cell.outputs = merged


def render(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}},
                   record_timing=False).execute()
    _plain(nb)
    nbformat.write(nb, path)


def main(paths: list[str]) -> None:
    from parmana_lab import flow_diagram

    flow_diagram().save(REPO / "docs" / "img" / "flow.svg")  # the README's picture: the same code as the lessons'
    targets = [Path(p) for p in paths] or sorted((REPO / "notebooks").glob("*.ipynb")) + sorted(
        (REPO / "notebooks" / "solutions").glob("*.ipynb"))
    for path in targets:
        render(path)
        print("ran and stored", path.relative_to(REPO) if path.is_relative_to(REPO) else path)


if __name__ == "__main__":
    main(sys.argv[1:])
