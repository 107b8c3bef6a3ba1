"""The thread executor: one worker thread per stage, joined by bounded queues.

    loader --docs--> chunker --chunked docs--> embedder --embedded docs--> indexer (the one writer)

Bounded queues keep memory flat whatever the corpus size. On a pause, the indexer commits the
whole documents already embedded before it stops (nothing lost); on a cancel it drops them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable, Optional

from kbingest.pipeline.executors.base import Executor
from kbingest.pipeline.job.control import PhaseFailed, RunControl, Stopped
from kbingest.pipeline.messages import describe, noted_document
from kbingest.pipeline.stages.base import PassStages
from kbingest.pipeline.status import JobPhase
from kbingest.pipeline.textsafe import fs_text

log = logging.getLogger("kbingest.engine")

QUEUE_DOCS = 16  # loaded documents waiting to be chunked
QUEUE_CHUNKED = 16  # chunked documents waiting to be embedded
QUEUE_EMBEDDED = 64  # embedded documents waiting to be indexed
_END = object()  # end of stream marker
_PHASE_OF_WORKER = {
    "loader": JobPhase.LOADING,
    "chunker": JobPhase.CHUNKING,
    "embedder": JobPhase.EMBEDDING,
    "indexer": JobPhase.INDEXING,
}


class ThreadExecutor(Executor):
    name = "threads"
    capacity = {"docs": QUEUE_DOCS, "chunked": QUEUE_CHUNKED, "embedded": QUEUE_EMBEDDED}

    def __init__(self, control: RunControl) -> None:
        super().__init__(control)
        self.queues: dict[str, queue.Queue[Any]] = {}  # between the phases, while a pass runs
        self.stages: Optional[PassStages] = None

    def run_pass(self, stages: PassStages) -> None:
        self._failure: Optional[PhaseFailed] = None
        # what each worker holds now, and the slowest (seconds, path, phase): one assignment per
        # document, read by the job's monitor (instrument.py) about once a second
        self.current: dict[str, Any] = {"chunking": None, "embedding": None}
        self.slowest: Optional[tuple[float, str, str]] = None
        self.stages = stages
        self.queues = {name: queue.Queue(cap) for name, cap in self.capacity.items()}
        q = self.queues
        workers = [
            ("loader", lambda: self._load(stages, q["docs"])),
            ("chunker", lambda: self._chunk(stages, q["docs"], q["chunked"])),
            ("embedder", lambda: self._embed(stages, q["chunked"], q["embedded"])),
            ("indexer", lambda: self._index(stages, q["embedded"])),
        ]
        threads = []
        try:
            for name, fn in workers:
                th = threading.Thread(target=self._worker, args=(name, fn), name=f"kbingest-{name}", daemon=True)
                th.start()  # then listed: one that could not start (no memory for its stack) is never joined
                threads.append(th)
        finally:
            if len(threads) < len(workers):
                self.control.halt()
            for th in threads:
                th.join()
            self.queues, self.stages = {}, None  # the pass is over: nothing is in flight (instrument.py)
        if self._failure is not None:
            raise self._failure

    def queue_depths(self) -> dict[str, int]:
        return {name: qq.qsize() for name, qq in self.queues.items()}

    def _timed(self, phase: str, item: Any, fn: Callable[[Any], Any]) -> Any:
        self.current[phase] = item
        t0 = time.perf_counter()
        try:
            return fn(item)
        finally:
            took = time.perf_counter() - t0
            self.current[phase] = None
            if self.slowest is None or took > self.slowest[0]:
                self.slowest = (took, getattr(item, "path", ""), phase)

    # ---- workers ----------------------------------------------------------------------------
    def _worker(self, name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Stopped:
            pass
        except PhaseFailed as e:
            if self._failure is None:
                self._failure = e
            self.control.halt()
        except BaseException as e:
            phase = _PHASE_OF_WORKER[name]
            doc = noted_document()
            msg = describe(e, doing=f"{phase.value} {fs_text(doc)}" if doc else f"the {name} ({phase.value})")
            log.error("%s", msg, exc_info=True)
            if self._failure is None:
                self._failure = PhaseFailed(phase, msg)
            self.control.halt()

    def _load(self, stages: PassStages, out: queue.Queue) -> None:
        for d in stages.load:
            self._put(out, d)
        self._put(out, _END)

    def _chunk(self, stages: PassStages, inp: queue.Queue, out: queue.Queue) -> None:
        while (item := self._get(inp)) is not _END:
            d = self._timed("chunking", item, stages.chunk)
            if d is not None:
                self._put(out, d)
        stages.chunk.finish()
        self._put(out, _END)

    def _embed(self, stages: PassStages, inp: queue.Queue, out: queue.Queue) -> None:
        while (item := self._get(inp)) is not _END:
            for d in self._timed("embedding", item, stages.embed.add):
                self._put(out, d)
        for d in stages.embed.flush():
            self._put(out, d)
        self._put(out, _END)

    def _index(self, stages: PassStages, inp: queue.Queue) -> None:
        index, control = stages.index, self.control
        try:
            while True:
                try:
                    item = inp.get(timeout=0.1)
                except queue.Empty:
                    item = None
                if item is _END:
                    index.flush()
                    break
                if item is not None:
                    index.add(item)
                if control.stopping:
                    break
                if index.due():
                    index.flush()
        finally:
            if control.pausing and self._failure is None:
                # pause: whole documents already embedded are written before stopping (nothing lost)
                while True:
                    try:
                        item = inp.get_nowait()
                    except queue.Empty:
                        break
                    if item is not _END:
                        index.add(item)
                index.flush()
        if not control.stopping:
            index.finish()

    def _put(self, q: queue.Queue, item: Any) -> None:
        while True:
            self.control.check()
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _get(self, q: queue.Queue) -> Any:
        while True:
            self.control.check()
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue
