"""The executor registry: a job's `executor` setting names one of these."""

from __future__ import annotations

from typing import Callable

from kbingest.pipeline.executors.base import Executor
from kbingest.pipeline.job.control import RunControl

# name -> "module:Class", imported only when a job uses it (a distributed engine is a heavy import)
_REGISTRY: dict[str, str] = {
    "threads": "kbingest.pipeline.executors.threads:ThreadExecutor",
    "ray": "kbingest.pipeline.executors.ray:RayExecutor",  # the extra kbingest[ray]
}


class UnknownExecutor(ValueError):
    pass


def names() -> list[str]:
    return sorted(_REGISTRY)


def register(name: str, target: str) -> None:
    _REGISTRY[name] = target


def make(name: str, control: RunControl) -> Executor:
    import importlib

    target = _REGISTRY.get(name)
    if target is None:
        raise UnknownExecutor(f"unknown executor {name!r} (known: {', '.join(names())})")
    module, cls = target.split(":")
    factory: Callable[[RunControl], Executor] = getattr(importlib.import_module(module), cls)
    return factory(control)
