"""ipywidgets panels over the kit's public API (they hold no logic of their own).

Needs ``ipywidgets`` 8 (installed with the package). Each panel shows errors as
messages, never tracebacks, and has a readable text repr outside Jupyter.
"""

from .execution_form import ExecutionForm
from .inspector import AttestationInspector
from .overrides import OverridePanel
from .replay_explorer import ReplayExplorer
from .reproducibility import ReproducibilityPanel
from .verification import VerificationDashboard

__all__ = ["AttestationInspector", "ExecutionForm", "OverridePanel", "ReplayExplorer", "ReproducibilityPanel", "VerificationDashboard"]
