"""Re-render the README's panel screenshots (``make screenshots``): the browser tests, writing into docs/img.

The pictures are what ``make test-browser`` sees after each panel's interaction, so they never drift from what is tested.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    os.environ["PARMANA_BROWSER_ARTIFACTS"] = str(REPO / "docs" / "img")
    sys.exit(pytest.main([str(REPO / "browser"), "-q", "-p", "no:cacheprovider", "-o", "addopts=-ra"]))
