"""Imports that cost a cold command more than what it uses.

`import lancedb` imports lance_namespace, which imports lance_namespace_urllib3_client, whose package
`__init__` imports the REST client of every namespace API: 366 pydantic `validate_call` methods, built
at import time, about 0.9 s of a 1.5 s import on this machine (docs/benchmarks.md, cold commands).
kbingest uses LanceDB on folders and object stores, never a REST namespace, and lance_namespace
needs only that package's `models`. `defer_package_init` lets the submodules be imported without
running the package's `__init__`; the first use of one of its own names runs it then, whole, so
nothing is missing for code that does use it.
"""
from __future__ import annotations

import importlib.util
import sys
import threading
import types
from typing import Any

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
        if spec is None or not spec.submodule_search_locations or spec.loader is None:
            return False
        mod = types.ModuleType(name)
        mod.__path__ = list(spec.submodule_search_locations)
        mod.__spec__, mod.__file__, mod.__package__, mod.__loader__ = spec, spec.origin, name, spec.loader
        ran = threading.Event()

        def __getattr__(attr: str) -> Any:
            with _lock:
                if not ran.is_set():
                    ran.set()
                    del mod.__dict__["__getattr__"]
                    exec(spec.loader.get_code(name), mod.__dict__)
            try:
                return mod.__dict__[attr]
            except KeyError:
                raise AttributeError(f"module {name!r} has no attribute {attr!r}") from None

        mod.__getattr__ = __getattr__  # type: ignore[method-assign]
        sys.modules[name] = mod
        return True


def import_lancedb() -> Any:
    """lancedb, imported without what kbingest never uses."""
    if "lancedb" not in sys.modules:
        for name in DEFERRED:
            defer_package_init(name)
    import lancedb

    return lancedb
