"""Watch mode's change feed: which paths below the sources may have changed, in settled bursts.

Filesystem events are hints, not truth. The feed only says WHICH paths to look at again; the
engine re-walks them and decides from what is on disk (hash unchanged: skipped; gone: its chunks
removed). So the feed errs on the side of reporting a path, and says `rescan=True` whenever it
may have lost track (kernel queue overflow, a dead observer thread, a switch to polling).

    with ChangeFeed(sources) as feed:          # start before the first full pass
        ...full pass...
        while running:
            burst = feed.next_burst(timeout=0.25)
            if burst: re-walk None if burst.rescan else sorted(burst.paths)

How a path becomes ready (all in the caller's thread; watchdog's threads only record times):
- quiet: no event for it for `quiet_seconds`;
- stable: its size and mtime unchanged across `stable_seconds` (re-stat); still changing: wait;
  a path that no longer exists is ready after the quiet period (a deletion);
- a folder is ready only when nothing pending below it is still settling (a folder being
  copied in comes as one burst, once every file in it is complete);
- once something is ready, paths still settling get up to `quiet_seconds` more to join the
  same burst (a checkout or a "save all" is one pass, not several);
- a path that never settles (a file written without pause) is reported after MAX_SETTLE_S
  anyway, and again once it settles;
- paths below another reported folder are left out (walking the folder covers them), and a
  burst of more than MAX_BURST_PATHS paths names their folders instead.

Editor junk (swap files, backups, lock files, temp files, anything that is not .md, .markdown or
.txt) is ignored; folder events (created, deleted, moved) always count. Moves report both ends.

Watching itself: one watchdog observer for all sources, recursive on each source folder. A single
file source is watched through its parent folder (filtered to that file); a source that does
not exist (yet) through its nearest existing ancestor, so that its creation is seen. Sources are
watched at their real path and events mapped back to the path as given, as the engine keys
documents by it. The sources are re-examined on every `next_burst`, and the observer is rebuilt
when one appears, vanishes or changes kind. When inotify runs out of watches or instances
(ENOSPC, EMFILE), the feed falls back to polling and says so in `warning`.

This module must not import Textual (pipeline/ is the engine).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from kbingest.pipeline.load.loading import is_document

log = logging.getLogger("kbingest.watch")

POLL_INTERVAL_S = 1.0  # polling observer: seconds between two snapshots of each source
MAINTAIN_EVERY_S = 0.25  # how often next_burst re-examines the sources and the observer's health
RETRY_START_S = 2.0  # after the observer failed to start: seconds before trying again
MAX_SETTLE_S = 30.0  # a path still changing after this long is reported anyway
MAX_BURST_PATHS = 1000  # a burst naming more paths names their folders instead
LIMIT_ERRNOS = (errno.ENOSPC, errno.EMFILE, errno.ENFILE, errno.ENOMEM)
POLLING_WARNING = {
    errno.ENOSPC: "inotify watch limit reached: fell back to polling (slower); raise fs.inotify.max_user_watches",
    errno.EMFILE: "inotify instance limit reached: fell back to polling (slower); raise fs.inotify.max_user_instances",
}
VCS_DIRS = frozenset({".git", ".hg", ".svn"})  # their churn is never a document change

# what is asked of the kernel / reported by the emitters: no opens, reads or folder mtime churn
EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileClosedEvent,
    FileAttribEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
]
_FILE_EVENTS = frozenset({"created", "modified", "deleted", "moved", "closed", "attrib"})
_DIR_EVENTS = frozenset({"created", "deleted", "moved"})


@dataclass(frozen=True)
class Burst:
    paths: frozenset[str]  # absolute paths that may have changed (files or folders), each once
    rescan: bool = False  # the observer lost events or failed: re-walk everything


def is_junk(name: str) -> bool:
    """Editor and tool litter, and anything that is not a document (by its file name)."""
    if not name or name == "4913" or name.startswith(".#") or (name.startswith("#") and name.endswith("#")):
        return True
    low = name.lower()
    if low.endswith((".swp", ".swx", "~", ".tmp")):
        return True
    return not is_document(low)


# ---- watchdog's inotify observer, with its lost-event and watch-limit signals surfaced -----------
#
# watchdog 7.x: one InotifyFD thread reads the kernel queue for all emitters of an observer. On
# IN_Q_OVERFLOW, InotifyFD.handle_event calls on_queue_overflow() on every watch group, which
# discards pending move events and rebuilds its watches, and logs a warning; no event reaches the
# handlers. An ENOSPC/EMFILE while adding the watch of a sub-folder is swallowed (only the root's
# failure reaches the caller). Both go through InotifyFD, so a subclass of it sees both.
# (watchdog <= 6 silently dropped the overflow event (wd == -1); there is nothing to hook there.)

_FeedInotifyObserver: Optional[type] = None
try:  # Linux with watchdog >= 7
    from watchdog.observers.inotify import InotifyEmitter, InotifyObserver
    from watchdog.observers.inotify_c import InotifyFD

    class _FeedInotifyFD(InotifyFD):
        def __init__(self, on_trouble: Callable[[str, Optional[OSError]], None]) -> None:
            self._kb_on_trouble = on_trouble
            super().__init__()

        def add_callback(self, path, mask, callback, id_):
            try:
                return super().add_callback(path, mask, callback, id_)
            except OSError as e:
                if e.errno in LIMIT_ERRNOS:
                    self._kb_on_trouble("limit", e)
                raise

        def handle_event(self, event) -> None:
            if event.is_queue_overflow:
                self._kb_on_trouble("overflow", None)
            super().handle_event(event)

    class _FeedInotifyObserverCls(InotifyObserver):
        """InotifyObserver reading through a _FeedInotifyFD (start/schedule are InotifyObserver's)."""

        def __init__(self, on_trouble: Callable[[str, Optional[OSError]], None]) -> None:
            fd = _FeedInotifyFD(on_trouble)  # inotify_init: EMFILE when out of instances
            self._inotify_fd = fd
            fd.start()
            BaseObserver.__init__(self, InotifyEmitter, inotify_fd=fd)

    _FeedInotifyObserver = _FeedInotifyObserverCls
except Exception:  # not Linux, or another watchdog layout: watchdog's default observer, unhooked
    InotifyObserver = None  # type: ignore[assignment,misc]


def _native_observer(on_trouble: Callable[[str, Optional[OSError]], None]) -> BaseObserver:
    if _FeedInotifyObserver is not None:
        return _FeedInotifyObserver(on_trouble)
    from watchdog.observers import Observer

    return Observer()


# ---- what is watched ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Watch:
    """One source as watched now. Events under `real` (the source's real path) are mapped back to
    `source` (the path as given). `recursive`: a folder, watched recursively at `real`; otherwise
    `watch_dir` is a folder above it, watched alone, where only `real` itself matters."""

    source: str
    real: str
    watch_dir: str
    recursive: bool

    def map(self, path: str) -> Optional[str]:
        if path == self.real:
            return self.source
        if self.recursive and path.startswith(_dir_prefix(self.real)):
            return os.path.join(self.source, path[len(_dir_prefix(self.real)) :])
        return None


def _dir_prefix(path: str) -> str:
    return path if path.endswith(os.sep) else path + os.sep


def _plan_one(source: str) -> _Watch:
    real = os.path.realpath(source)
    if os.path.isdir(real):
        return _Watch(source, real, real, True)
    if os.path.lexists(real):  # a single file source (or something the walk will refuse)
        return _Watch(source, real, os.path.dirname(real), False)
    anc = os.path.dirname(real)  # missing: watch the nearest existing ancestor for its creation
    while not os.path.isdir(anc) and os.path.dirname(anc) != anc:
        anc = os.path.dirname(anc)
    return _Watch(source, real, anc, False)


@dataclass
class _Pending:
    first_seen: float
    last_event: float
    sig: Optional[tuple] = None  # (size, mtime_ns) at sig_at; None: not sampled since the last event
    sig_at: float = 0.0


class _Handler(FileSystemEventHandler):
    def __init__(self, feed: "ChangeFeed", watch: _Watch) -> None:
        super().__init__()
        self.feed = feed
        self.watch = watch

    def dispatch(self, event: FileSystemEvent) -> None:
        try:  # an exception here would kill watchdog's dispatcher thread
            self.feed._on_event(self.watch, event)
        except Exception:
            log.exception("watch event %r", event)


class ChangeFeed:
    """Which paths below the sources may have changed, as settled bursts. Thread-safe: watchdog's
    threads only record event times; stat checks run in next_burst (the caller's thread)."""

    def __init__(
        self,
        sources: list[str],
        quiet_seconds: float = 0.4,
        stable_seconds: float = 0.2,
        force_polling: bool = False,
        exclude: Sequence[str] = (),
    ) -> None:
        self.sources = [os.path.abspath(os.fsdecode(s)) for s in sources]
        self.quiet_seconds = float(quiet_seconds)
        self.stable_seconds = float(stable_seconds)
        self.force_polling = force_polling
        self.exclude = tuple(os.path.abspath(os.fsdecode(p)) for p in exclude)  # e.g. the engine's home
        self.warning: Optional[str] = None
        self._polling_warning: Optional[str] = None  # why polling, when it is a fallback
        self.polling = False  # True once running on the polling observer
        self.restarts = 0  # observer rebuilds (overflow, death, sources changed)
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._wakeup = threading.Event()
        self._trouble: Optional[str] = None  # "overflow" | "limit": set from watchdog's threads
        self._trouble_error: Optional[OSError] = None
        self._observer: Optional[BaseObserver] = None
        self._plan: list[_Watch] = []
        self._rescan = False
        self._started = False
        self._stopped = False
        self._next_maintain = 0.0
        self._retry_at: Optional[float] = None  # the observer is down: try again at this time
        self._first_ready: Optional[float] = None

    # ---- life cycle --------------------------------------------------------------------------
    def start(self) -> "ChangeFeed":
        if self._started:
            return self
        self._started = True
        self._stopped = False
        self.polling = self.force_polling
        self._plan = [_plan_one(s) for s in self.sources]
        self._start_observer(initial=True)
        return self

    def stop(self) -> None:
        self._stopped = True
        self._started = False
        self._wakeup.set()
        self._stop_observer()

    def __enter__(self) -> "ChangeFeed":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- the observer ------------------------------------------------------------------------
    def _on_trouble(self, kind: str, err: Optional[OSError]) -> None:
        """From watchdog's threads: events were lost (overflow) or a watch could not be added."""
        with self._lock:
            if self._trouble != "limit":
                self._trouble = kind
                self._trouble_error = err
        self._wakeup.set()

    def _stop_observer(self) -> None:
        obs, self._observer = self._observer, None
        if obs is None:
            return
        try:
            obs.stop()
        except Exception:
            log.debug("stopping the observer", exc_info=True)
        try:
            obs.join(timeout=5)
        except RuntimeError:  # never started
            pass

    def _build(self, polling: bool) -> BaseObserver:
        obs = PollingObserver(timeout=POLL_INTERVAL_S) if polling else _native_observer(self._on_trouble)
        try:
            for w in self._plan:
                obs.schedule(_Handler(self, w), w.watch_dir, recursive=w.recursive, event_filter=EVENT_FILTER)
            obs.start()
        except BaseException:
            try:
                obs.stop()
                obs.join(timeout=5)
            except Exception:
                pass
            raise
        return obs

    def _start_observer(self, initial: bool = False) -> bool:
        """(Re)start the observer on the current plan; inotify out of watches: polling."""
        self._stop_observer()
        with self._lock:
            self._trouble, self._trouble_error = None, None
        try:
            if not self.polling:
                try:
                    obs = self._build(polling=False)
                    with self._lock:
                        trouble, err = self._trouble, self._trouble_error
                    if trouble == "limit":  # a sub-folder could not be watched: not all is seen
                        self._stop_observer_obj(obs)
                        raise err or OSError(errno.ENOSPC, "inotify watch limit reached")
                    self._observer = obs
                except OSError as e:
                    if e.errno not in LIMIT_ERRNOS:
                        raise
                    self._to_polling(e)
            if self.polling:
                self._observer = self._build(polling=True)
            self._retry_at = None
            self.warning = self._polling_warning if self.polling else None
            return True
        except Exception as e:
            log.warning("could not start watching: %s", e)
            self.warning = f"watching failed: {type(e).__name__}: {e}; retrying"
            self._observer = None
            self._retry_at = time.monotonic() + RETRY_START_S
            if not initial:
                self._rescan = True
            return False

    @staticmethod
    def _stop_observer_obj(obs: BaseObserver) -> None:
        try:
            obs.stop()
            obs.join(timeout=5)
        except Exception:
            pass

    def _to_polling(self, e: OSError) -> None:
        self.polling = True
        self._polling_warning = POLLING_WARNING.get(
            e.errno or 0, f"inotify unavailable ({e.strerror or e}): fell back to polling (slower)"
        )
        self.warning = self._polling_warning
        log.warning("%s", self.warning)

    def _healthy(self) -> bool:
        obs = self._observer
        if obs is None or not obs.is_alive():
            return False
        fd = getattr(obs, "_inotify_fd", None)
        if isinstance(fd, threading.Thread) and not fd.is_alive():
            return False
        return all(e.is_alive() for e in list(obs.emitters))

    def _maintain(self, now: float) -> None:
        """Re-examine the sources and the observer: rebuild it when needed, flag a rescan when
        events may have been lost."""
        with self._lock:
            trouble, err = self._trouble, self._trouble_error
        healthy = self._observer is None or self._healthy()  # None: down, retried below
        if trouble is not None or not healthy or now >= self._next_maintain:
            self._next_maintain = now + MAINTAIN_EVERY_S
            plan = [_plan_one(s) for s in self.sources]
            if plan != self._plan:  # a source appeared, vanished or changed kind (its emitter may be gone)
                changed = [n.source for o, n in zip(self._plan, plan) if o != n]
                self._plan = plan
                log.info("sources changed (%s): rebuilding the observer", ", ".join(changed))
                if trouble == "limit" and not self.polling:
                    self._to_polling(err or OSError(errno.ENOSPC, "inotify watch limit reached"))
                if trouble is not None:
                    self._rescan = True
                self.restarts += 1
                self._start_observer()
                t = time.monotonic()
                with self._lock:
                    for s in changed:  # walk them again
                        self._touch(s, t)
                return
        if self._observer is None:
            if self._retry_at is not None and now >= self._retry_at:
                self.restarts += 1
                if self._start_observer():
                    self._rescan = True
            return
        if trouble == "limit" and not self.polling:
            self._to_polling(err or OSError(errno.ENOSPC, "inotify watch limit reached"))
            why = "a folder could not be watched"
        elif trouble == "overflow":
            why = "watch events were lost (queue overflow)"
        elif not healthy:
            why = "the watch observer stopped"
        else:
            return
        log.warning("%s: restarting the observer and rescanning", why)
        self._rescan = True
        self.restarts += 1
        self._start_observer()

    # ---- events (watchdog's threads) -----------------------------------------------------------
    def _on_event(self, watch: _Watch, event: FileSystemEvent) -> None:
        etype = event.event_type
        if event.is_directory:
            if etype not in _DIR_EVENTS:
                return
        elif etype not in _FILE_EVENTS:
            return
        raw = [event.src_path]
        if etype == "moved" and getattr(event, "dest_path", None):
            raw.append(event.dest_path)
        now = time.monotonic()
        hit = False
        for r in raw:
            if not r:
                continue
            p = watch.map(os.fsdecode(r))
            if p is None or not self._relevant(watch, p, event.is_directory):
                continue
            with self._lock:
                self._touch(p, now)
            hit = True
        if hit:
            self._wakeup.set()

    def _relevant(self, watch: _Watch, path: str, is_dir: bool) -> bool:
        for ex in self.exclude:
            if path == ex or path.startswith(_dir_prefix(ex)):
                return False
        if VCS_DIRS.intersection(path[len(watch.source) :].split(os.sep)):  # below the source only
            return False
        return is_dir or not is_junk(os.path.basename(path))

    def _touch(self, path: str, now: float) -> None:
        """Record an event for path (lock held)."""
        e = self._pending.get(path)
        if e is None:
            self._pending[path] = _Pending(first_seen=now, last_event=now)
        else:
            e.last_event = now
            e.sig = None

    # ---- bursts (the caller's thread) ------------------------------------------------------------
    def next_burst(self, timeout: float) -> Optional[Burst]:
        """All the paths ready now as one Burst, waiting up to `timeout` seconds for some; None
        when nothing is ready by then. A Burst with rescan=True when events may have been lost."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            self._wakeup.clear()
            now = time.monotonic()
            if self._started:
                self._maintain(now)
            if self._rescan:
                self._rescan = False
                self._first_ready = None
                return Burst(frozenset(), rescan=True)
            burst, wake = self._collect(time.monotonic())
            if burst is not None:
                return burst
            now = time.monotonic()
            if now >= deadline or self._stopped:
                return None
            wait = min(deadline, wake, now + MAINTAIN_EVERY_S) - now
            self._wakeup.wait(max(0.005, wait))

    def _collect(self, now: float) -> tuple[Optional[Burst], float]:
        """The burst ready now, if any; else the time it is worth looking again."""
        with self._lock:
            snap = {p: (e.first_seen, e.last_event, e.sig, e.sig_at) for p, e in self._pending.items()}
        if not snap:
            self._first_ready = None
            return None, float("inf")
        wake = float("inf")
        settled: set[str] = set()
        unsettled: set[str] = set()
        dirs: set[str] = set()
        samples: dict[str, tuple[tuple[int, int], float]] = {}
        for p, (first, last, sig, sig_at) in snap.items():
            overdue = now - first >= MAX_SETTLE_S
            quiet_at = last + self.quiet_seconds
            if now < quiet_at and not overdue:
                unsettled.add(p)
                wake = min(wake, quiet_at)
                continue
            try:
                st = os.stat(p)
            except OSError:
                try:
                    st = os.lstat(p)
                except OSError:
                    settled.add(p)  # gone: a deletion (or moved away)
                    continue
            if stat.S_ISDIR(st.st_mode):
                dirs.add(p)
                settled.add(p)  # a folder needs quiet only (and its content settled, below)
                continue
            cur = (st.st_size, st.st_mtime_ns)
            if overdue:
                settled.add(p)
            elif sig != cur:
                samples[p] = (cur, now)  # first sample, or still changing: look again later
                unsettled.add(p)
                wake = min(wake, now + self.stable_seconds)
            elif now - sig_at >= self.stable_seconds:
                settled.add(p)
            else:
                unsettled.add(p)
                wake = min(wake, sig_at + self.stable_seconds)
        if samples:
            with self._lock:
                for p, (cur, at) in samples.items():
                    e = self._pending.get(p)
                    if e is not None and e.last_event == snap[p][1]:
                        e.sig, e.sig_at = cur, at
        # a folder waits for anything below it still settling
        if unsettled and dirs:
            blocked: set[str] = set()
            for u in unsettled:
                d = os.path.dirname(u)
                while d and d not in blocked:
                    if d in dirs:
                        blocked.add(d)
                    nd = os.path.dirname(d)
                    if nd == d:
                        break
                    d = nd
            if blocked:
                settled -= blocked
                unsettled |= blocked
        if not settled:
            self._first_ready = None
            return None, wake
        if unsettled:  # give what is still settling a moment to join this burst
            if self._first_ready is None:
                self._first_ready = now
            join_by = self._first_ready + self.quiet_seconds
            if now < join_by:
                return None, min(wake, join_by)
        self._first_ready = None
        with self._lock:
            for p in settled:
                e = self._pending.get(p)
                if e is not None and e.last_event == snap[p][1]:
                    del self._pending[p]
                elif e is not None:
                    e.sig = None  # changed again while we decided: it will come again once settled
        return Burst(frozenset(self._coarsen(_outermost(settled)))), wake

    def _coarsen(self, paths: list[str]) -> list[str]:
        """At most MAX_BURST_PATHS paths: beyond, each is replaced by its folder (never above its
        source), level by level. Walking a folder again costs a hash per unchanged document; a
        pass over very many single paths costs more (each is matched against the table)."""
        while len(paths) > MAX_BURST_PATHS:
            roots = sorted(self.sources, key=len, reverse=True)
            up = []
            for p in paths:
                root = next((r for r in roots if p == r or p.startswith(_dir_prefix(r))), None)
                d = os.path.dirname(p)
                up.append(d if root is not None and p != root else p)
            up = _outermost(up)
            if set(up) == set(paths):  # all at their source roots already
                break
            paths = up
        return paths


def _outermost(paths: Iterable[str]) -> list[str]:
    """The paths without those below another of them (walking a folder covers what is in it)."""
    ps = set(paths)
    out = []
    for p in ps:
        d = os.path.dirname(p)
        covered = False
        while d and d != p:
            if d in ps:
                covered = True
                break
            nd = os.path.dirname(d)
            if nd == d:
                break
            d = nd
        if not covered:
            out.append(p)
    return out
