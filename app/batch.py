"""Headless mode: the job runs in worker threads, this thread prints JSON Lines snapshots.

stdout carries status JSON only (one object a line, flushed); stderr carries what a person reads.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
import time
from typing import Callable, Optional, Protocol, TextIO

from kbingest.app.exit_codes import ExitCode, exit_code_for
from kbingest.app.text import progress_line
from kbingest.pipeline.models import JobStatusResponse
from kbingest.pipeline.service import EngineFailure, JobHandle, KbError, Unreachable, debug, describe, printable
from kbingest.pipeline.status import JobStatus

POLL_S = 0.1
MIN_INTERVAL_S = 0.5  # at most one progress line every 0.5 s while only progress changes
RESUME_HINT = "then resume the job"  # how the words of an exhausted resource end (pipeline/messages.py RESUME_HINT)


class LineSink(Protocol):
    """Where the lines go: stdout, or the SSE journal's list (app/server.py)."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


class JsonLinesReporter:
    """Decides which snapshots become lines: every status or phase change, progress at most every 0.5 s."""

    def __init__(self, out: LineSink, clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.clock = clock
        self._last_key: Optional[tuple] = None
        self._last_progress: Optional[tuple] = None
        self._last_at = -1e9
        self.lines = 0
        self.closed = False  # the reader went away (`| head -1`): the job goes on, unprinted

    @staticmethod
    def _key(s: JobStatusResponse) -> tuple:
        return (s.status, s.phase, tuple(p.status for p in s.phase_details), s.error)

    @staticmethod
    def _progress(s: JobStatusResponse) -> tuple:
        return (
            s.progress,
            tuple(p.items_processed for p in s.phase_details),
            tuple(p.items_total for p in s.phase_details),
            s.message,
        )

    def offer(self, s: JobStatusResponse, force: bool = False) -> bool:
        key, prog, now = self._key(s), self._progress(s), self.clock()
        if not force and key == self._last_key:
            if prog == self._last_progress or now - self._last_at < MIN_INTERVAL_S:
                return False
        if self.closed:
            return False
        try:
            self.out.write(s.to_json() + "\n")
            self.out.flush()
        except OSError as e:
            if not isinstance(e, BrokenPipeError) and e.errno != errno.EPIPE:
                raise
            self.closed = True
            _silence(self.out)
            return False
        self._last_key, self._last_progress, self._last_at = key, prog, now
        self.lines += 1
        return True


def _silence(out: LineSink) -> None:
    """Point a closed pipe's descriptor at /dev/null, so that nothing fails flushing it at exit."""
    try:
        fd = out.fileno()  # type: ignore[attr-defined]  # a sink without a descriptor: AttributeError below
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
    except (OSError, ValueError, AttributeError):
        pass


def _progress_line(s: JobStatusResponse) -> str:
    return progress_line(s)


def summary_line(s: JobStatusResponse) -> str:
    m = s.metrics
    text = f"kbingest: job {s.job_id}: {s.message}"
    if m.get("documents_failed"):
        text += f" ({m['documents_failed']} document error(s): `kbingest status {s.job_id}` lists them)"
    return printable(text)


def _stopped(job: JobHandle, e: BaseException) -> EngineFailure:
    """A job stopped by an error that escaped it (a resource the process ran out of: threads, memory),
    in kbingest's words, naming how to go on (exit 1)."""
    return EngineFailure(f"{describe(e, doing=f'job {job.job_id}')}; resume with: kbingest resume {job.job_id}")


def run_batch(
    job: JobHandle, out: TextIO = sys.stdout, err: TextIO = sys.stderr, on_start: Optional[Callable[[], None]] = None
) -> ExitCode:
    reporter = JsonLinesReporter(out)
    reporter.offer(job.snapshot(), force=True)  # the first line: the job exists
    tty = err.isatty()
    result: dict[str, object] = {}

    def work() -> None:
        try:
            result["snap"] = job.run()
        except BaseException as e:  # reported by the main thread
            result["error"] = e

    def on_signal(signum: int, _frame: object) -> None:
        err.write(f"\nkbingest: {signal.Signals(signum).name}: pausing job {job.job_id} (checkpoint first)…\n")
        err.flush()
        job.pause()

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    th = threading.Thread(target=work, name="kbingest-job", daemon=True)
    try:
        th.start()
    except RuntimeError as e:  # no thread (thread limit, or no memory for its stack): the job never ran
        for sig, h in old.items():
            signal.signal(sig, h)
        raise _stopped(job, e) from None
    if on_start:
        on_start()
    seq = 0
    try:
        while th.is_alive():
            th.join(POLL_S)
            snaps, seq = job.snapshots_since(seq)  # every status or phase change since, then now
            for snap in snaps:
                reporter.offer(snap)
            if tty:
                err.write("\r\x1b[2K" + _progress_line(snap))
                err.flush()
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
    if tty:
        err.write("\r\x1b[2K")
    if "error" in result:
        failure = result["error"]
        assert isinstance(failure, BaseException)
        if isinstance(failure, (KbError, KeyboardInterrupt, SystemExit)) or debug():
            raise failure
        raise _stopped(job, failure) from None  # e.g. a library's panic (a BaseException) when no thread could start
    snaps, seq = job.snapshots_since(seq)
    for snap in snaps[:-1]:
        reporter.offer(snap)
    final = snaps[-1]
    reporter.offer(final, force=True)
    return _report_end(reporter, final, job.errors, err, f"kbingest resume {job.job_id}")


def _report_end(
    reporter: JsonLinesReporter, final: JobStatusResponse, errors: list, err: TextIO, resume: str
) -> ExitCode:
    """stderr's end of a --batch run (the summary, how to resume, the failed documents); the exit code."""
    if reporter.closed:
        err.write("kbingest: stdout was closed early: the status lines stopped there; the job went on\n")
    err.write(summary_line(final) + "\n")
    if final.status == JobStatus.PAUSED or (final.status == JobStatus.FAILED and RESUME_HINT in (final.error or "")):
        err.write(printable(f"kbingest: resume with: {resume}") + "\n")
    for e in errors[:20]:
        err.write(printable(f"  {e.phase}: {e.path}: {e.kind}: {e.message}") + "\n")
    if len(errors) > 20:
        err.write(f"  … and {len(errors) - 20} more\n")
    warnings = final.metrics.get("document_warning_list") or []
    for w in warnings[:20]:
        err.write(printable(f"  warning: {w.get('path')}: {w.get('warning')}") + "\n")
    err.flush()
    return exit_code_for(final)


# ---- --server URL: a job the server runs, followed through its events --------------------------------
RECONNECTS = 5  # a stream broken off is opened again this many times in a row before giving up


def run_remote_batch(service, job, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> ExitCode:
    """`kbingest --server URL ingest|resume ... --batch`: the job runs in the server; its snapshots
    come from the server's SSE stream (the --batch lines' moments, chosen there by the same
    JsonLinesReporter) and are printed as they come. The job rests at a terminal status, or paused
    (SIGINT and SIGTERM ask the server to pause it, as --batch pauses a local job): exit codes as for
    a local job. A paused snapshot counts once the job has been seen doing something else, or once
    the stream ends (a resumed job's first snapshot is the paused one it was resumed from)."""
    reporter = JsonLinesReporter(out)
    tty = err.isatty()
    job_id = job.job_id

    def ask_pause() -> None:
        try:
            service.request_pause(job_id)
        except KbError as e:  # it had rested meanwhile, or the server is gone: the stream says which
            err.write(printable(f"kbingest: {e.message}") + "\n")
            err.flush()

    def on_signal(signum: int, _frame: object) -> None:
        err.write(
            f"\nkbingest: {signal.Signals(signum).name}: pausing job {job_id} in the server (checkpoint first)…\n"
        )
        err.flush()
        threading.Thread(target=ask_pause, name="kbingest-pause", daemon=True).start()

    def rests(s: JobStatusResponse, moved: bool) -> bool:
        return s.status.is_terminal or (s.status == JobStatus.PAUSED and moved)

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    final: Optional[JobStatusResponse] = None
    moved, broken = False, 0
    last: Optional[JobStatusResponse] = None  # a stream opened again starts with the job as it is: not twice
    try:
        while final is None:
            try:
                for snap in service.events(job_id):
                    broken = 0
                    if snap != last:
                        reporter.offer(snap, force=True)
                    last = snap
                    moved = moved or snap.status != JobStatus.PAUSED
                    if tty:
                        err.write("\r\x1b[2K" + _progress_line(snap))
                        err.flush()
                    if rests(snap, moved):
                        final = snap
                        break
            except Unreachable:
                broken += 1
                if broken > RECONNECTS:
                    raise
                time.sleep(min(2.0, 0.2 * 2**broken))
                continue
            if final is None:  # the stream ended: the job as it is now
                now = service.job(job_id).status
                if rests(now, True):
                    final = now
                    if now != last:
                        reporter.offer(now, force=True)
                else:
                    time.sleep(0.2)  # still at work (the stream broke off): follow it again
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
    if tty:
        err.write("\r\x1b[2K")
    return _report_end(reporter, final, final.errors, err, f"kbingest --server {service.url} resume {job_id}")
