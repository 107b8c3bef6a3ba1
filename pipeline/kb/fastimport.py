"""Imports that cost a cold command more than what it uses.

`import lancedb` imports lance_namespace, which imports lance_namespace_urllib3_client, whose package
`__init__` imports the REST client of every namespace API: 366 pydantic `validate_call` methods, built
at import time, about 0.9 s of a 1.5 s import on this machine (docs/benchmarks.md, cold commands).
kbingest uses LanceDB on folders and object stores, never a REST namespace, and lance_namespace
needs only that package's `models`. `defer_package_init` lets the submodules be imported without
running the package's `__init__`; the first use of one of its own names runs it then, whole, so
nothing is missing for code that does use it.

Two more, measured on a cold `import lancedb` (Python 3.11, this machine: 1.5-2.0 s in all):
- On Python < 3.12 lancedb decorates ~100 methods with the `overrides` package, which checks each
  signature against its parent's at import (~0.3 s); on 3.12 it uses `typing.override`, a marker
  that checks nothing. While lancedb imports, `overrides` is that marker (`_marker_overrides`); the
  real package is there for anything imported after.
- pyarrow's dataset module imports pandas as it loads (~0.45 s). A cold command that never makes a
  DataFrame (`kbingest search`) says so first (`forgo_pandas`): for the rest of that process
  pandas cannot be imported, and pyarrow goes on without it. Never in a library or server process.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import sys
import threading
import types
import typing
from typing import Any, Iterator

DEFERRED = ("lance_namespace_urllib3_client",)
_lock = threading.Lock()


def defer_package_init(name: str) -> bool:
    """Put a stand-in for package `name` in sys.modules: its submodules import as usual; its own
    `__init__` runs at the first access of a name it defines. False when it is imported already or
    not a package here."""
    with _lock:
        if name in sys.modules:
            return False
        spec = importlib.util.find_spec(name)
        loader = spec.loader if spec is not None else None
        if spec is None or not spec.submodule_search_locations or not isinstance(loader, importlib.abc.InspectLoader):
            return False  # not a package whose code can be read (a namespace package, an unusual loader)
        mod = types.ModuleType(name)
        mod.__path__ = list(spec.submodule_search_locations)
        mod.__spec__, mod.__file__, mod.__package__, mod.__loader__ = spec, spec.origin, name, spec.loader
        ran = threading.Event()

        def __getattr__(attr: str) -> Any:
            with _lock:
                if not ran.is_set():
                    ran.set()
                    del mod.__dict__["__getattr__"]
                    code = loader.get_code(name)
                    if code is not None:  # a package's __init__ without code defines nothing
                        exec(code, mod.__dict__)
            try:
                return mod.__dict__[attr]
            except KeyError:
                raise AttributeError(f"module {name!r} has no attribute {attr!r}") from None

        mod.__getattr__ = __getattr__  # type: ignore[method-assign]
        sys.modules[name] = mod
        return True


@contextlib.contextmanager
def _marker_overrides() -> Iterator[None]:
    """`overrides` as lancedb has it on Python 3.12: `override` marks, `EnforceOverrides` is a plain
    class. Only while nothing else has imported the real package, and only for this block."""
    if sys.version_info >= (3, 12) or "overrides" in sys.modules:
        yield
        return
    stub = types.ModuleType("overrides")

    def override(method: Any = None, **_checks: Any) -> Any:
        return method if method is not None else (lambda m: m)

    stub.override = stub.overrides = override  # type: ignore[attr-defined]
    stub.EnforceOverrides = type("EnforceOverrides", (), {})  # type: ignore[attr-defined]
    stub.final = typing.final  # type: ignore[attr-defined]
    sys.modules["overrides"] = stub
    try:
        yield
    finally:
        if sys.modules.get("overrides") is stub:
            del sys.modules["overrides"]


class _NoPandas(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"No module named {name!r} (kbingest: this command does without it)", name=name)
        return None


def forgo_pandas() -> bool:
    """This process will never make a DataFrame: pandas cannot be imported from now on, so
    pyarrow's dataset module skips it. False (nothing done) if pandas or pyarrow.dataset is loaded."""
    if "pandas" in sys.modules or "pyarrow.dataset" in sys.modules:
        return False
    if not any(isinstance(f, _NoPandas) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoPandas())
    return True


def import_lancedb() -> Any:
    """lancedb, imported without what kbingest never uses."""
    if "lancedb" not in sys.modules:
        for name in DEFERRED:
            defer_package_init(name)
        with _marker_overrides():
            import lancedb
    import lancedb

    return lancedb
