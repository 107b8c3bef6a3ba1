"""What failed, in kbingest's words: the one place an exception becomes a line for people.

`describe(exc, doing="writing 3 documents to knowledge base 'docs'")` says what kbingest was doing
and what went wrong, in one line, without the internals of the libraries underneath (LanceDB's
Rust source paths, "Wrapped error: ..." chains). The library's own text is appended only when
KBINGEST_DEBUG=1. An out-of-memory error names the address-space limit (RLIMIT_AS, `ulimit -v`);
every exhausted resource is named in kbingest's words, whichever library ran out of it
(`exhausted`): the file size limit (`ulimit -f`), memory, threads.

Worker threads note the document they are working on (`note_document`), so that a failure that
escapes a worker can still name it (`noted_document`).
"""

from __future__ import annotations

import errno
import os
import re
import threading
from typing import Optional

DEBUG_ENV = "KBINGEST_DEBUG"
MAX_LINE = 500  # a described error never grows past this (library text can be megabytes)

# Source locations of compiled dependencies: "/root/.cargo/registry/src/.../utils.rs:172:20",
# "/rustc/<hash>/library/core/src/result.rs:1896:29", "src/io.rs:12"
_RUST_LOCATION = re.compile(r",?\s*(?:at\s+)?[^\s,]*\.rs:\d+(?::\d+)?")
# wrapper words that say nothing to a person
_WRAPPERS = re.compile(r"(?:lance error:\s*|LanceError\(\w+\):\s*|Wrapped error:\s*|Generic \S+ error:\s*)")


def debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def library_text(exc: BaseException) -> str:
    """The exception's text without compiled-source locations and wrapper words, on one line."""
    text = _RUST_LOCATION.sub("", str(exc))
    text = _WRAPPERS.sub("", text)
    return " ".join(text.split())[:MAX_LINE]


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def memory_limit() -> Optional[int]:
    """This process's address-space limit (RLIMIT_AS, what `ulimit -v` sets), or None if unlimited."""
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError, AttributeError):
        return None
    return None if soft in (resource.RLIM_INFINITY, -1) else int(soft)


def out_of_memory() -> str:
    limit = memory_limit()
    if limit is None:
        return "out of memory (no address-space limit is set: the machine's memory ran out)"
    return (
        f"out of memory: the address-space limit (RLIMIT_AS, `ulimit -v`) is {_size(limit)}; "
        "raise it, or lower --max-file-mb"
    )


def _origin(exc: BaseException) -> Optional[str]:
    """The installed package whose code raised exc (its innermost frame under site-packages), or
    None when kbingest or Python's own library raised it: then its text is written for people."""
    tb, path = exc.__traceback__, None
    while tb is not None:
        path = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    if type(exc).__module__.split(".")[0] == "kbingest" or path is None:
        return None
    m = re.search(r"[/\\](?:site|dist)-packages[/\\]([^/\\]+)", path)
    if m is None:
        return None
    pkg = m.group(1).split(".")[0]
    return None if pkg == "kbingest" else {"lancedb": "LanceDB", "lance": "LanceDB"}.get(pkg, pkg)


def file_size_limit() -> Optional[int]:
    """This process's file size limit (RLIMIT_FSIZE, what `ulimit -f` sets), or None if unlimited."""
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    except (ImportError, OSError, ValueError, AttributeError):
        return None
    return None if soft in (resource.RLIM_INFINITY, -1) else int(soft)


def file_too_large() -> str:
    limit = file_size_limit()
    if limit is None:
        return (
            "a file reached the largest size its file system allows: put the knowledge bases (--db) on "
            "another file system, then resume the job"
        )
    return (
        f"the file size limit (RLIMIT_FSIZE, `ulimit -f`) of {_size(limit)} was reached: raise it, then resume the job"
    )


def no_thread() -> str:
    limit = memory_limit()
    room = "" if limit is None else f", or the address-space limit (`ulimit -v`) of {_size(limit)}"
    return (
        f"no thread could be started: the thread limit (`ulimit -u`){room} was reached; "
        "raise it, or lower --threads, then resume the job"
    )


# Exhausted resources, told apart by the text any library (or Python) gives: (kind, markers)
_EXHAUSTED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("file_size", ("file too large", "os error 27", "file size limit exceeded")),
    (
        "threads",
        (
            "can't start new thread",
            "can't spawn worker thread",
            "pthread_create failed",
            "blas_thread_init",
            "failed to spawn thread",
            "unable to create thread",
        ),
    ),
    (
        "memory",
        (
            "failed to allocate memory",
            "bad_alloc",
            "out of memory",
            "cannot allocate memory",
            "memory allocation",
            "failed to map segment from shared object",
        ),
    ),
)


def exhausted(exc: BaseException) -> Optional[str]:
    """The resource the process ran out of ("file_size", "memory", "threads"), whatever raised it
    (an OSError, a library's RuntimeError or ImportError, Python's own "can't start new thread");
    None when exc is no such failure."""
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return "file_size"
    if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
        return "memory"
    low = " ".join(str(exc).split()).lower()
    return next((kind for kind, marks in _EXHAUSTED if any(m in low for m in marks)), None)


RESUME_HINT = "then resume the job"  # every exhausted resource's words end so (app/batch.py names the command)


def exhausted_words(kind: str) -> str:
    if kind == "memory":
        return f"{out_of_memory()}, {RESUME_HINT}"
    return {"file_size": file_too_large, "threads": no_thread}[kind]()


# Kinds of library failure, told apart by the library's text: (kind, kbingest's words, markers)
FAILURE_KINDS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("file_size", "the file size limit was reached", ("file too large", "os error 27")),
    ("disk_full", "the disk is full", ("no space left",)),
    ("permission", "permission denied", ("permission denied",)),
    (
        "truncated",
        "a file it needs is truncated or corrupt",
        ("file size is too small", "invalid range", "corrupt", "failed to fill whole buffer", "unexpected eof"),
    ),
    ("missing", "a file it needs is missing", ("not found", "no such file")),
    ("open_files", "too many open files (raise `ulimit -n`)", ("too many open files",)),
    (
        "memory",
        "out of memory",
        ("failed to allocate memory", "bad_alloc", "out of memory", "cannot allocate memory", "memory allocation"),
    ),
)


def failure_kind(text: str) -> Optional[str]:
    """The kind of a library's failure (FAILURE_KINDS), where its text says which it is."""
    low = text.lower()
    return next((kind for kind, _, marks in FAILURE_KINDS if any(m in low for m in marks)), None)


def _classify(text: str) -> Optional[str]:
    kind = failure_kind(text)
    if kind == "memory":  # an allocator's failure (onnxruntime, Arrow): name the limit as for MemoryError
        return out_of_memory()
    return next(words for k, words, _ in FAILURE_KINDS if k == kind) if kind else None


def _what(exc: BaseException, lib: Optional[str]) -> str:
    resource = exhausted(exc)
    if resource is not None:
        return exhausted_words(resource)
    if isinstance(exc, OSError) and exc.errno is not None:  # the system's words are already plain
        what = exc.strerror or library_text(exc)
        if exc.errno == errno.ENOSPC:
            what = f"the disk is full ({what})"
        return f"{what}: {exc.filename}" if exc.filename else what
    if lib is None:
        return library_text(exc) or type(exc).__name__
    kind = _classify(library_text(exc))
    return f"{kind} ({lib})" if kind else f"{lib} raised {type(exc).__name__}"


def reason(exc: BaseException) -> str:
    """What went wrong, in kbingest's words; a library's own text only with KBINGEST_DEBUG=1."""
    lib = _origin(exc)
    line = _what(exc, lib)
    if lib is not None and debug():
        line += f" [{type(exc).__name__}: {' '.join(str(exc).split())[: MAX_LINE * 4]}]"
    elif lib is not None and not isinstance(exc, (MemoryError, OSError)) and exhausted(exc) is None:
        line += f" (KBINGEST_DEBUG=1 shows {lib}'s message)"
    return line


def describe(exc: BaseException, doing: str) -> str:
    """One line: what kbingest was doing, and what went wrong (`reason`)."""
    return f"{doing} failed: {reason(exc)}"


# ---- the document a worker thread is on ------------------------------------------------------
_noted = threading.local()


def note_document(path: Optional[str]) -> None:
    """This thread is working on this document now (None: on none)."""
    _noted.path = path


def noted_document() -> Optional[str]:
    return getattr(_noted, "path", None)
