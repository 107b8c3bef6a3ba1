"""What a running pass is doing, sampled by the job's monitor thread (about once a second, never
per document): queue depths between the phases, how long each has been empty or full, the
documents in each phase, the indexer's next commit and the slowest document so far.

It only reads what the executor exposes (`queues`, `current`, `slowest`, `stages`); an executor
without them publishes nothing. Each sample is bounded: IN_FLIGHT_LISTED documents per phase.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from kbingest.pipeline.textsafe import fs_text

IN_FLIGHT_LISTED = 3  # documents per phase in the snapshot
QUEUE_METRICS = {"docs": "queue_docs", "chunked": "queue_chunked", "embedded": "queue_embedded"}
# the phase that reads each queue: its documents are "in" that phase
QUEUE_READER = {"docs": "chunking", "chunked": "embedding", "embedded": "indexing"}


def _doc(d: Any) -> Optional[dict[str, Any]]:
    path = getattr(d, "path", None)
    if not isinstance(path, str):
        return None  # the end-of-stream marker
    loaded = getattr(d, "loaded", None)
    rows = getattr(d, "rows", None)
    out: dict[str, Any] = {"path": fs_text(path)}
    if loaded is not None and getattr(loaded, "size", None) is not None:
        out["size"] = int(loaded.size)
    if rows:
        out["chunks"] = len(rows)
    return out


def _peek(q: Any, n: int) -> list[Any]:
    with q.mutex:  # a few references, under the queue's own lock: no copy of the queue
        return [q.queue[i] for i in range(min(n, len(q.queue)))]


class Sampler:
    """Keeps, between samples, since when each queue has been empty or full."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self._empty_since: dict[str, float] = {}
        self._full_since: dict[str, float] = {}

    def reset(self) -> None:
        self._empty_since.clear()
        self._full_since.clear()

    def sample(self, executor: Any) -> dict[str, Any]:
        """The metrics to set (name -> value); {} when the executor shows nothing."""
        queues = getattr(executor, "queues", None)
        if not queues:
            return {}
        now = self.clock()
        out: dict[str, Any] = {}
        in_flight: dict[str, list[dict[str, Any]]] = {}
        current = dict(getattr(executor, "current", {}) or {})
        for phase in ("chunking", "embedding"):
            d = _doc(current.get(phase))
            if d is not None:
                in_flight.setdefault(phase, []).append(d)
        for name, q in queues.items():
            depth, cap = q.qsize(), q.maxsize
            empty = self._since(self._empty_since, name, depth == 0, now)
            full = self._since(self._full_since, name, cap > 0 and depth >= cap, now)
            out[QUEUE_METRICS[name]] = {
                "depth": depth,
                "capacity": cap,
                "empty_s": round(empty, 1),
                "full_s": round(full, 1),
            }
            listed = in_flight.setdefault(QUEUE_READER[name], [])
            for item in _peek(q, IN_FLIGHT_LISTED):
                d = _doc(item)
                if d is not None and len(listed) < IN_FLIGHT_LISTED:
                    listed.append(d)
        out["in_flight"] = {k: v for k, v in in_flight.items() if v}
        stages = getattr(executor, "stages", None)
        index = getattr(stages, "index", None)
        if index is not None:
            batch = list(getattr(index, "batch", ()) or ())
            out["commit_batch"] = {"documents": len(batch), "chunks": int(getattr(index, "rows", 0) or 0)}
        out.update(_slowest(executor))
        return out

    def idle(self, executor: Any) -> dict[str, Any]:
        """The metrics once a pass is over: empty queues, nothing in flight (the slowest stays)."""
        self.reset()
        capacity = getattr(executor, "capacity", {}) or {}
        out: dict[str, Any] = {
            QUEUE_METRICS[name]: {"depth": 0, "capacity": cap, "empty_s": 0.0, "full_s": 0.0}
            for name, cap in capacity.items()
            if name in QUEUE_METRICS
        }
        out.update(in_flight={}, commit_batch={"documents": 0, "chunks": 0})
        out.update(_slowest(executor))  # a pass shorter than a sample still says its slowest document
        return out

    @staticmethod
    def _since(table: dict[str, float], key: str, cond: bool, now: float) -> float:
        if not cond:
            table.pop(key, None)
            return 0.0
        return now - table.setdefault(key, now)


def _slowest(executor: Any) -> dict[str, Any]:
    slowest = getattr(executor, "slowest", None)
    if slowest is None:
        return {}
    return {"slowest_document": {"path": fs_text(slowest[1]), "phase": slowest[2], "seconds": round(slowest[0], 3)}}
