"""Issue 18 items 14 and 15: errors said in kbingest's words. Out of memory names the phase, the
document and the address-space limit; LanceDB's Rust source paths never reach a person, and its
text only with KBINGEST_DEBUG=1; a worker that fails says what failed, not a bare "worker X"."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from kbingest.pipeline.job.engine import IngestJob
from kbingest.pipeline.jobstore.recovery import open_store
from kbingest.pipeline.load import loading as engine_mod  # the loading stage reads through it
from kbingest.pipeline.messages import describe
from kbingest.pipeline.models import JobConfig
from kbingest.pipeline.status import JobPhase, JobStatus

RUST_INTERNALS = (".rs:", "cargo", "rustc", "Wrapped error", "LanceError(")


def _real_lance_error(tmp_path) -> Exception:
    """What LanceDB raises when a data file of a table is gone."""
    import lancedb

    db = lancedb.connect(str(tmp_path / "db"))
    t = db.create_table("t", [{"id": "a", "vector": [0.1, 0.2]}])
    for f in (tmp_path / "db" / "t.lance" / "data").iterdir():
        f.unlink()
    with pytest.raises(Exception) as info:
        t.search(np.array([0.1, 0.2], dtype=np.float32)).limit(1).to_list()
    return info.value


def test_lance_error_is_said_without_rust_internals_and_debug_keeps_its_text(tmp_path, monkeypatch):
    e = _real_lance_error(tmp_path)
    assert any(s in str(e) for s in RUST_INTERNALS)  # what the library says
    monkeypatch.delenv("KBINGEST_DEBUG", raising=False)
    line = describe(e, doing="searching knowledge base 't'")
    assert line.startswith("searching knowledge base 't' failed: a file it needs is missing (LanceDB)")
    assert not any(s in line for s in RUST_INTERNALS) and "\n" not in line
    assert "KBINGEST_DEBUG=1" in line
    monkeypatch.setenv("KBINGEST_DEBUG", "1")
    assert "Not found" in describe(e, doing="searching")  # the library's own text, for a developer


def test_system_and_own_errors_keep_their_plain_words():
    assert (
        describe(OSError(28, "No space left on device", "/h/x"), doing="writing")
        == "writing failed: the disk is full (No space left on device): /h/x"
    )
    assert describe(ValueError("bad chunk size"), doing="chunking") == "chunking failed: bad chunk size"


def test_failed_worker_says_what_failed_and_on_which_document(home, pages, monkeypatch, caplog):
    """A failure escaping a worker: the job's error and the log line say the phase, the document and
    what went wrong, without library internals; never a bare 'worker loader' line."""
    real = engine_mod.read_raw  # the loading stage reads a document's bytes through it, then extracts
    bad = sorted(str(p) for p in pages.rglob("*.md"))[2]

    def read(cand, limits):
        if cand.path == bad:
            raise RuntimeError(
                "lance error: LanceError(IO): Generic N/A error: Wrapped error: boom, "
                "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/lance-io-13.0.0/src/x.rs:1:2"
            )
        return real(cand, limits)

    monkeypatch.setattr(engine_mod, "read_raw", read)
    caplog.set_level(logging.ERROR, logger="kbingest")
    snap = IngestJob.create(home, open_store(home), JobConfig(sources=[str(pages)], kb="docs", embedder="fake")).run()
    assert snap.status == JobStatus.FAILED and snap.phase == JobPhase.LOADING
    assert bad in snap.error and "loading" in snap.error and "boom" in snap.error
    assert not any(s in snap.error for s in RUST_INTERNALS)
    lines = [r.getMessage() for r in caplog.records]
    assert lines and not any(m.startswith("worker ") for m in lines)
    assert any(bad in m and "failed" in m for m in lines)


# ---- out of memory: a real address-space limit, in a process of its own ------------------------
OOM_RUN = """
import ctypes, json, re, resource, sys
ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # as the CLI does: two malloc arenas
from kbingest.pipeline.embed.embedding import FakeEmbedder
from kbingest.pipeline.job.engine import IngestJob
from kbingest.pipeline.jobstore.recovery import open_store
from kbingest.pipeline.models import JobConfig
from kbingest.pipeline.paths import Home
mode, home, src = sys.argv[1:4]

class NoMemory(FakeEmbedder):
    def embed(self, texts):
        raise MemoryError()

def limited(config):
    return FakeEmbedder() if mode == "huge" else NoMemory()

def limit():
    # the limit from here on (the run): what this process maps now, plus some room
    vm = int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
    room = 400 << 20 if mode == "huge" else 8 << 30
    resource.setrlimit(resource.RLIMIT_AS, (vm + room, resource.RLIM_INFINITY))

h = Home(home).ensure()
cfg = JobConfig(sources=[src], kb="docs", embedder="fake", max_file_bytes=4 << 30, retries=1)
job = IngestJob.create(h, open_store(h), cfg, embedder_factory=limited)
from kbingest.pipeline.kb.table import KnowledgeBase
KnowledgeBase(h, "docs").ensure(384)  # LanceDB's runtime mapped before the limit, as a model would be
limit()
snap = job.run()
print(json.dumps({"status": snap.status.value, "phase": snap.phase.value, "error": snap.error,
                  "errors": [e.model_dump(mode="json") for e in job.errors], "indexed": snap.metrics.get("chunks_indexed", 0)}))
"""


def _run_limited(mode: str, home, src) -> dict:
    r = subprocess.run(
        [sys.executable, "-", mode, str(home), str(src)],
        input=OOM_RUN,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(300)
def test_out_of_memory_on_a_huge_document_names_phase_document_and_limit(tmp_path):
    src = tmp_path / "docs"
    src.mkdir()
    (src / "small.md").write_text("# Small\n\nA page that fits in memory.\n")
    huge = src / "huge.md"
    with open(huge, "wb") as f:
        f.write(b"# Huge\n\n" + b"words of text " * 800)  # text where formats look (its first 8 KiB)
        f.truncate(500 << 20)  # then sparse: no disk used, but reading it needs the memory
    out = _run_limited("huge", tmp_path / "home", src)
    assert out["status"] == "completed" and out["indexed"] >= 1  # the rest of the job goes on
    [err] = out["errors"]
    assert err["path"] == str(huge) and err["phase"] == "loading" and err["kind"] == "out_of_memory"
    assert "out of memory" in err["message"] and "RLIMIT_AS" in err["message"]
    assert re.search(r"is \d+\.\d [GM]iB", err["message"])  # the limit itself


@pytest.mark.timeout(300)
def test_model_out_of_memory_fails_the_job_naming_phase_document_and_limit(tmp_path, pages):
    out = _run_limited("model", tmp_path / "home", pages)
    assert out["status"] == "failed" and out["phase"] == "embedding"
    assert "out of memory" in out["error"] and "RLIMIT_AS" in out["error"] and "GiB" in out["error"]
    assert str(pages) in out["error"]  # the document it was embedding
    assert "MemoryError" not in out["error"]


def test_an_allocator_failure_in_a_library_is_out_of_memory_with_the_limit():
    """onnxruntime and Arrow say "Failed to allocate memory" in a RuntimeError, not a MemoryError."""
    import resource

    try:
        exec(
            compile(
                "raise RuntimeError('[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory "
                "for requested buffer of size 1073741824')",
                os.path.join(os.path.dirname(np.__file__), "fake_site_module.py"),
                "exec",
            )
        )
    except RuntimeError as e:
        line = describe(e, doing="embedding")
    assert line.startswith("embedding failed: out of memory")
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    assert ("RLIMIT_AS" in line) == (soft != resource.RLIM_INFINITY)
