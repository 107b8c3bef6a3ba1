"""Issue 18 item 20: a killed optimize. The compaction child dies with the engine that started it
(it would write to the table without the writer lock of its knowledge base), and the next run redoes the optimize."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from conftest import REPO, copy_pages

from kbingest.pipeline.job.engine import IngestJob
from kbingest.pipeline.jobstore.recovery import open_store
from kbingest.pipeline.kb.table import KnowledgeBase
from kbingest.pipeline.paths import Home
from kbingest.pipeline.status import JobStatus

# The engine, in a process of its own: every table is compacted in a child, and the only optimize
# is the final one (commit_rows small, optimize_every large).
ENGINE = """
import sys
from kbingest.pipeline.kb import compaction
compaction.CHILD_ROWS = 1
from kbingest.pipeline.job.engine import IngestJob
from kbingest.pipeline.jobstore.recovery import open_store
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
                if "kbingest.pipeline.kb.compaction" in " ".join(c.cmdline()):
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
    engine = subprocess.Popen(
        [sys.executable, "-", str(home.root), str(src)],
        cwd=str(REPO),
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
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
            if "kbingest.pipeline.kb.compaction" in " ".join(c.cmdline()):
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
    from kbingest.pipeline.kb import compaction
    from kbingest.pipeline.models import JobConfig

    store = open_store(home)
    cfg = JobConfig(sources=[str(pages)], kb="docs", embedder="fake", commit_rows=20, optimize_every=1000)

    def broken(table, ann_min_rows=None):
        raise RuntimeError("optimize interrupted")

    monkeypatch.setattr(compaction, "optimize_here", broken)
    assert IngestJob.create(home, store, cfg).run().status == JobStatus.COMPLETED  # hygiene: not fatal
    assert KnowledgeBase(home, "docs").optimize_pending
    monkeypatch.undo()
    snap = IngestJob.create(home, store, cfg).run()  # a re-run with nothing new to commit
    assert snap.metrics.get("commits") == 0 and snap.metrics.get("optimizes") == 1
    assert not KnowledgeBase(home, "docs").optimize_pending and KnowledgeBase(home, "docs").fragments() == 1


# ---- memory that does not follow the table (issue 12, figure 3.3) --------------------------------
def test_compaction_rewrites_only_what_was_written_since(tmp_path):
    """A fragment that reached COMPACT's target is left as it is: each optimize of a growing table
    rewrites the small fragments its commits wrote, not the whole table (whose memory would grow
    with it: LanceDB's 1M-row default rewrote every row each time)."""
    import lance
    import pyarrow as pa

    from kbingest.pipeline.kb import compaction

    target = compaction.COMPACT["target_rows_per_fragment"]

    def rows(start: int, n: int) -> pa.Table:
        return pa.table(
            {
                "id": pa.array(range(start, start + n), pa.int64()),
                "text": pa.array([f"chunk {i}" for i in range(start, start + n)]),
            }
        )

    uri = str(tmp_path / "t.lance")
    lance.write_dataset(rows(0, target + 10), uri)
    for k in range(6):  # six small commits
        lance.write_dataset(rows(target + 10 + 50 * k, 50), uri, mode="append")
    ds = lance.dataset(uri)
    full = ds.get_fragments()[0]
    assert len(ds.get_fragments()) == 7
    compaction.compact(ds)
    ds = lance.dataset(uri)
    frags = ds.get_fragments()
    assert [f.fragment_id for f in frags][0] == full.fragment_id  # the full fragment untouched
    assert frags[0].data_files()[0].path == full.data_files()[0].path
    assert len(frags) == 2 and sum(f.count_rows() for f in frags) == target + 10 + 300
    assert sorted(ds.to_table(columns=["id"])["id"].to_pylist()) == list(range(target + 10 + 300))


def test_a_child_reports_its_own_peak_not_its_parents(tmp_path):
    """Linux carries a parent's RSS high-water mark into ru_maxrss across fork and exec: a small child
    of a large parent must still report its own peak (the compaction child's report)."""
    ballast = bytearray(300 * 1024 * 1024)  # touched: resident in this process
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    code = (
        "import resource; from kbingest.pipeline.rss import own_peak_rss_mib; "
        "print(own_peak_rss_mib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True, check=True)
    own, inherited = map(float, out.stdout.split())
    del ballast
    assert inherited > 300  # what ru_maxrss says: the parent's peak
    assert own < 100, own  # a Python that imported one small module
