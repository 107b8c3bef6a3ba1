"""Issue 27, item 9: a resource the process runs out of is named in kbingest's words (the file size
limit, memory, threads), never as "LanceDB raised RuntimeError" or "can't start new thread"; the job
ends failed (exit 1), says how to resume, and resumes once the limit is raised."""

from __future__ import annotations

import errno
import json
import resource
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import REPO, SMALL_PAGES, copy_pages

from kbingest.pipeline import messages
from kbingest.pipeline.messages import exhausted, reason


class PanicException(BaseException):
    """Like pyo3_runtime.PanicException: a BaseException, not an Exception."""


@pytest.mark.parametrize(
    "exc, kind",
    [
        (OSError(errno.EFBIG, "File too large"), "file_size"),
        (
            RuntimeError("lance error: LanceError(IO): File too large (os error 27), /root/.cargo/x.rs:191:9"),
            "file_size",
        ),
        (MemoryError(), "memory"),
        (OSError(errno.ENOMEM, "Cannot allocate memory"), "memory"),
        (ImportError("libarrow.so: failed to map segment from shared object"), "memory"),
        (ImportError("libgomp.so.1: cannot allocate memory in static TLS block"), "memory"),
        (RuntimeError("can't start new thread"), "threads"),
        (PanicException("OS can't spawn worker thread: Resource temporarily unavailable (os error 11)"), "threads"),
        (
            RuntimeError(
                "OpenBLAS blas_thread_init: pthread_create failed for thread 1 of 2: Resource temporarily unavailable"
            ),
            "threads",
        ),
        (RuntimeError("table not found"), None),
        (OSError(errno.EAGAIN, "Resource temporarily unavailable"), None),  # a lock that would block: not threads
    ],
)
def test_exhausted_resources_are_told_apart(exc, kind):
    assert exhausted(exc) == kind


def test_the_words_name_the_resource_and_its_limit(monkeypatch):
    monkeypatch.setattr(messages, "file_size_limit", lambda: 64 * 1024)
    monkeypatch.setattr(messages, "memory_limit", lambda: 600 * 1024 * 1024)
    assert reason(OSError(errno.EFBIG, "File too large")).startswith(
        "the file size limit (RLIMIT_FSIZE, `ulimit -f`) of 64.0 KiB was reached"
    )
    line = reason(RuntimeError("can't start new thread"))
    assert "no thread could be started" in line and "`ulimit -u`" in line and "600.0 MiB" in line
    assert "address-space limit (RLIMIT_AS, `ulimit -v`) is 600.0 MiB" in reason(MemoryError())
    for exc in (ImportError("x: failed to map segment from shared object"), RuntimeError("can't start new thread")):
        assert "raised" not in reason(exc) and "ImportError" not in reason(exc)


def _cli(home: Path, *args: str, fsize: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:  # Python ignores SIGXFSZ: a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run(
        [sys.executable, "-m", "kbingest", "--home", str(home), *args],
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit if fsize else None,
    )


def test_file_size_limit_is_named_and_the_job_resumes(tmp_path):
    src = copy_pages(tmp_path / "docs", SMALL_PAGES)
    home = tmp_path / "h"
    r = _cli(home, "ingest", str(src), "--kb", "fs", "--batch", "--embedder", "fake", fsize=64 * 1024)
    assert r.returncode == 1, r.stderr
    final = json.loads(r.stdout.splitlines()[-1])
    assert final["status"] == "failed"
    assert "file size limit (RLIMIT_FSIZE, `ulimit -f`) of 64.0 KiB was reached" in final["error"], final["error"]
    assert "LanceDB raised" not in r.stderr and "RuntimeError" not in r.stderr and "Traceback" not in r.stderr
    job_id = final["job_id"]
    assert f"kbingest resume {job_id}" in r.stderr, r.stderr

    r2 = _cli(home, "resume", job_id, "--batch")  # the limit raised (none)
    assert r2.returncode == 0, r2.stderr
    assert json.loads(r2.stdout.splitlines()[-1])["metrics"]["documents_added"] == len(SMALL_PAGES)


def test_no_thread_for_the_job_is_named_with_resume(tmp_path, monkeypatch):
    """The job's own thread cannot start (thread limit, or no memory for its stack): one line, exit 1."""
    import io

    from kbingest.app import batch
    from kbingest.pipeline.service import EngineFailure

    class Job:
        job_id = "j-1"

        def snapshot(self):
            from kbingest.pipeline.models import JobConfig  # noqa: F401  (a real snapshot is not needed)

            return None

    class NoStart(threading.Thread):
        def start(self):
            raise RuntimeError("can't start new thread")

    monkeypatch.setattr(batch.JsonLinesReporter, "offer", lambda self, snap, force=False: None)
    monkeypatch.setattr(batch.threading, "Thread", NoStart)
    with pytest.raises(EngineFailure) as e:
        batch.run_batch(Job(), out=io.StringIO(), err=io.StringIO())
    assert "no thread could be started" in e.value.message and "kbingest resume j-1" in e.value.message


def test_the_batch_front_knows_the_words_that_invite_a_resume():
    from kbingest.app import batch

    assert batch.RESUME_HINT == messages.RESUME_HINT
    for kind in ("file_size", "memory", "threads"):
        assert messages.exhausted_words(kind).endswith(messages.RESUME_HINT)


def test_a_rust_panic_escaping_a_command_is_one_line_and_exit_1(monkeypatch, capsys, tmp_path):
    """pyo3's PanicException derives from BaseException, so `except Exception` does not catch it."""
    from kbingest.app import cli

    class PanicException(BaseException):  # the name pyo3 gives it
        pass

    def boom(args):
        raise PanicException("OS can't spawn worker thread: Resource temporarily unavailable (os error 11)")

    monkeypatch.setitem(cli.COMMANDS, "jobs", boom)
    monkeypatch.delenv("KBINGEST_DEBUG", raising=False)
    assert cli.main(["--home", str(tmp_path / "home"), "jobs"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kbingest:") and "Traceback" not in err[0]
    assert "thread" in err[0]
