"""Issue 18 item 20: a killed optimize. The compaction child dies with the engine that started it
(it would write to the table without the engine lock), and the next run redoes the optimize."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import REPO, copy_pages
from kbingest.pipeline.engine import IngestJob
from kbingest.pipeline.index import KnowledgeBase
from kbingest.pipeline.jobs import open_store
from kbingest.pipeline.paths import Home
from kbingest.pipeline.status import JobStatus

# The engine, in a process of its own: every table is compacted in a child, and the only optimize
# is the final one (commit_rows small, optimize_every large).
ENGINE = """
import sys
from kbingest.pipeline import compaction
compaction.CHILD_ROWS = 1
from kbingest.pipeline.engine import IngestJob
from kbingest.pipeline.jobs import open_store
from kbingest.pipeline.models import JobConfig
from kbingest.pipeline.paths import Home
home = Home(sys.argv[1]).ensure()
cfg = JobConfig(sources=[sys.argv[2]], kb="docs", embedder="fake", commit_rows=20, optimize_every=1000)
IngestJob.create(home, open_store(home), cfg, job_id="j1").run()
"""


def _compaction_child(parent: psutil.Process, timeout: float) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in parent.children():
            try:
                if "kbingest.pipeline.compaction" in " ".join(c.cmdline()):
                    return c
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.05)
    raise AssertionError("the compaction child never started")


def _gone(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.timeout(180)
def test_killed_engine_takes_its_compaction_child_and_the_next_run_redoes_the_optimize(tmp_path):
    src = copy_pages(tmp_path / "docs")
    home = Home(tmp_path / "home").ensure()
    env = dict(os.environ, KBINGEST_COMPACTION_DELAY="60")  # the child waits: killed while it runs
    engine = subprocess.Popen([sys.executable, "-", str(home.root), str(src)], cwd=str(REPO), env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    engine.stdin.write(ENGINE)
    engine.stdin.close()
    try:
        child = _compaction_child(psutil.Process(engine.pid), timeout=120)
        assert home.optimize_marker("docs").exists()  # recorded before the optimize starts
        time.sleep(0.5)
        engine.send_signal(signal.SIGKILL)
        engine.wait(10)
        killed_at = time.monotonic()
        while not _gone(child) and time.monotonic() - killed_at < 5:
            time.sleep(0.02)
        took = time.monotonic() - killed_at
        assert _gone(child), "the compaction child outlived the engine"
        assert took < 1.5, f"the compaction child died {took:.2f} s after the engine"
    finally:
        if engine.poll() is None:
            engine.kill()
        for c in psutil.Process().children(recursive=True):
            if "kbingest.pipeline.compaction" in " ".join(c.cmdline()):
                c.kill()

    kb = KnowledgeBase(home, "docs")
    assert kb.fragments() > 1 and kb.optimize_pending  # the optimize never happened
    store = open_store(home)
    snap = IngestJob.load(home, store, "j1").run()  # resume: nothing left to index, the optimize is redone
    assert snap.status == JobStatus.COMPLETED, snap.error
    assert (snap.metrics.get("this_pass") or {}).get("chunks_embedded", 0) == 0  # this run's (totals span runs)
    kb = KnowledgeBase(home, "docs")
    assert kb.fragments() == 1
    assert not kb.optimize_pending


def test_failed_optimize_is_pending_until_one_succeeds(home, pages, monkeypatch):
    from kbingest.pipeline import compaction
    from kbingest.pipeline.models import JobConfig

    store = open_store(home)
    cfg = JobConfig(sources=[str(pages)], kb="docs", embedder="fake", commit_rows=20, optimize_every=1000)

    def broken(table):
        raise RuntimeError("optimize interrupted")

    monkeypatch.setattr(compaction, "optimize_here", broken)
    assert IngestJob.create(home, store, cfg).run().status == JobStatus.COMPLETED  # hygiene: not fatal
    assert KnowledgeBase(home, "docs").optimize_pending
    monkeypatch.undo()
    snap = IngestJob.create(home, store, cfg).run()  # a re-run with nothing new to commit
    assert snap.metrics.get("commits") == 0 and snap.metrics.get("optimizes") == 1
    assert not KnowledgeBase(home, "docs").optimize_pending and KnowledgeBase(home, "docs").fragments() == 1
