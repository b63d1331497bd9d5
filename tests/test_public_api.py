"""The public surface: every exported name is what it says, whatever was imported before it."""

from __future__ import annotations

import importlib
import pkgutil
import types

import parmana_lab


def test_no_submodule_shadows_an_exported_name():
    # importing a submodule sets it as an attribute of the package: a function of the same name would be hidden
    for info in pkgutil.walk_packages(parmana_lab.__path__, "parmana_lab."):
        importlib.import_module(info.name)
    shadowed = [name for name in parmana_lab.__all__ if isinstance(getattr(parmana_lab, name), types.ModuleType)]
    assert shadowed == []
    assert callable(parmana_lab.reproduce) and callable(parmana_lab.evaluate)


def test_all_and_the_lazy_table_agree():
    assert set(parmana_lab.__all__) == set(parmana_lab._EXPORTS) | {"evaluate"}
    from parmana_lab import widgets

    assert sorted(widgets.__all__) == ["AttestationInspector", "ExecutionForm", "OverridePanel", "ReplayExplorer",
                                       "ReproducibilityPanel", "VerificationDashboard"]
