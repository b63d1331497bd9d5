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


def test_every_refusal_class_survives_pickling():
    """Refusals cross process boundaries (verify workers, Dask tasks): class, code, stage and reason come back intact,
    whatever a subclass's own constructor takes."""
    import inspect
    import pickle

    for info in pkgutil.walk_packages(parmana_lab.__path__, "parmana_lab."):
        importlib.import_module(info.name)
    classes, todo = set(), [parmana_lab.ParmanaError]
    while todo:
        cls = todo.pop()
        classes.add(cls)
        todo += cls.__subclasses__()
    assert len(classes) >= 10
    for cls in classes:
        if cls is parmana_lab.ImportRefused:  # carries more than a refusal: its verification summary
            exc = cls("did not verify", {"failed": 1})
        else:
            exc = cls.__new__(cls)
            parmana_lab.ParmanaError.__init__(exc, "X-001", "verify", f"a {cls.__name__}")
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is cls and back.to_dict() == exc.to_dict() and str(back) == str(exc), inspect.getsourcefile(cls)
