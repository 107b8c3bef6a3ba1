"""Watch mode end to end: a watching IngestJob (fake embedder, real LanceDB) on a copy of a few
waf pages; each editor's way of saving leads to exactly one re-ingest of the file, deletions and
moves leave no orphan rows."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from conftest import copy_pages

PAGES = ["reliability/principles.md", "reliability/checklist.md", "security/principles.md"]
SETTLE = 1.5  # after a pass: long enough for a second, unwanted burst to show up


def wait_for(cond, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def pass_done(job, n: int) -> bool:
    """Burst n has been ingested: its pass is over (every phase completed) and the job watches again."""
    from kbingest.pipeline.status import JobPhase

    s = job.snapshot()
    return s.metrics.get("watch_bursts", 0) >= n and s.phase == JobPhase.COMPLETED and s.message.startswith("watching")


class Watching:
    """A watching job running in a thread, and what the tests ask of it."""

    def __init__(self, tmp_path: Path, **settings) -> None:
        from kbingest.pipeline.job.engine import IngestJob
        from kbingest.pipeline.jobstore.recovery import open_store
        from kbingest.pipeline.models import JobConfig
        from kbingest.pipeline.paths import Home

        self.folder = copy_pages(tmp_path / "docs", PAGES)
        self.home = Home(tmp_path / "home").ensure()
        self.store = open_store(self.home)
        self.job = IngestJob.create(
            self.home,
            self.store,
            JobConfig(sources=[str(self.folder)], kb="w", embedder="fake", watch=True, **settings),
        )
        self.thread = threading.Thread(target=self.job.run, name="watching-job")
        self.thread.start()
        wait_for(lambda: self.job.snapshot().message.startswith("watching"), 60, "the job to watch")
        self.initial_rows = len(self.kb().ids())

    def metrics(self) -> dict:
        return self.job.snapshot().metrics

    def bursts(self) -> int:
        return self.metrics().get("watch_bursts", 0)

    def pass_done(self, n: int) -> bool:
        return pass_done(self.job, n)

    def after_one_burst(self) -> dict:
        """Wait for the pass of the next burst, make sure no other comes, and return that pass's own
        counts (the job's metrics are totals across its passes: issue 14)."""
        wait_for(lambda: self.pass_done(1), 15, "one burst to be ingested")
        time.sleep(SETTLE)
        m = self.metrics()
        assert m["watch_bursts"] == 1, m
        return {"documents_added": 0, "documents_replaced": 0, "documents_removed": 0, **m["this_pass"]}

    def kb(self):
        from kbingest.pipeline.kb.table import KnowledgeBase

        return KnowledgeBase(self.home, "w")

    def rows(self) -> list[dict]:
        from kbingest.pipeline.kb.table import connect

        return connect(self.home).open_table("w").to_arrow().select(["source", "text", "doc_id"]).to_pylist()

    def stop(self) -> None:
        self.job.pause()
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture
def watching(tmp_path):
    w = Watching(tmp_path)
    yield w
    w.stop()


@pytest.fixture
def watching_mass_removal_allowed(tmp_path):
    """Watching with --allow-mass-removal: these 3-page tests remove most of the knowledge base on purpose."""
    w = Watching(tmp_path, max_removal_share=1.0)
    yield w
    w.stop()


def _one_replacement(w: Watching, path: Path, needle: str) -> None:
    m = w.after_one_burst()
    assert (m["documents_replaced"], m["documents_added"], m["documents_removed"]) == (1, 0, 0), m
    assert m["documents_found"] == 1  # only that file was walked again
    total = w.metrics()  # the job's totals: the first pass's work and the burst's
    assert (total["documents_added"], total["documents_replaced"], total["documents_found"]) == (
        len(PAGES),
        1,
        len(PAGES),
    )
    assert total["chunks_indexed"] == w.initial_rows + m["chunks_indexed"]
    rows = w.rows()
    assert any(needle in r["text"] for r in rows if r["source"] == str(path))
    assert {r["source"] for r in rows} == {str(w.folder / p) for p in PAGES}  # no stray document
    stored = w.kb().stored_docs()
    assert sorted(s.source for s in stored.values()) == sorted(str(w.folder / p) for p in PAGES)
    assert len(w.kb().ids()) == sum(s.chunks for s in stored.values())


def test_idle_watching_makes_no_bursts(watching):
    time.sleep(SETTLE)  # the first pass read every file: reading is not a change
    assert watching.bursts() == 0
    assert watching.metrics()["documents_added"] == len(PAGES)


def test_in_place_edit(watching):
    p = watching.folder / PAGES[0]
    with open(p, "a") as fh:
        fh.write("\n\nIn-place edits reach the knowledge base: aardvark.\n")
    _one_replacement(watching, p, "aardvark")


def test_chunked_write(watching):
    p = watching.folder / PAGES[0]
    text = p.read_text() + "\n\n## Appendix\n\n" + "Chunked writes settle before ingest: bison. " * 40
    with open(p, "w") as fh:
        for i in range(0, len(text), len(text) // 10 + 1):
            fh.write(text[i : i + len(text) // 10 + 1])
            fh.flush()
            time.sleep(0.05)
    _one_replacement(watching, p, "bison")


def test_atomic_rename_save(watching):
    p = watching.folder / PAGES[1]
    tmp = p.with_name("." + p.name + ".tmp")
    tmp.write_text(p.read_text() + "\n\nAtomic saves replace the file: cheetah.\n")
    os.replace(tmp, p)
    _one_replacement(watching, p, "cheetah")


def test_vim_style_save(watching):
    p = watching.folder / PAGES[1]
    backup = p.with_name(p.name + "~")
    new = p.read_text() + "\n\nVim writes a backup first: dromedary.\n"
    (p.parent / "4913").write_text("")
    os.unlink(p.parent / "4913")
    os.rename(p, backup)
    with open(p, "w") as fh:
        fh.write(new)
        fh.flush()
        os.fsync(fh.fileno())
    os.unlink(backup)
    _one_replacement(watching, p, "dromedary")


def test_deleted_file_leaves_the_table(watching):
    p = watching.folder / PAGES[2]
    before = watching.kb().stored_docs()
    gone = [s for s in before.values() if s.source == str(p)]
    assert gone
    p.unlink()
    m = watching.after_one_burst()
    assert (m["documents_removed"], m["documents_added"], m["documents_replaced"]) == (1, 0, 0), m
    rows = watching.rows()
    assert not [r for r in rows if r["source"] == str(p)]
    assert len(rows) == watching.initial_rows - gone[0].chunks


def test_moved_file_is_rekeyed(watching):
    src = watching.folder / PAGES[0]
    dest = watching.folder / "moved" / "principles-renamed.md"
    dest.parent.mkdir()
    os.rename(src, dest)
    m = watching.after_one_burst()
    assert (m["documents_added"], m["documents_removed"], m["documents_replaced"]) == (1, 1, 0), m
    rows = watching.rows()
    assert not [r for r in rows if r["source"] == str(src)]  # no orphan row
    assert [r for r in rows if r["source"] == str(dest)]
    assert len(rows) == watching.initial_rows  # same chunks, new key
    stored = watching.kb().stored_docs()
    assert str(dest) in {s.source for s in stored.values()}
    assert len({r["doc_id"] for r in rows}) == len(PAGES)


def test_folder_moved_out_leaves_the_table(watching_mass_removal_allowed, tmp_path):
    watching = watching_mass_removal_allowed
    sub = watching.folder / "reliability"
    shutil.move(str(sub), str(tmp_path / "archived"))
    m = watching.after_one_burst()
    assert m["documents_removed"] == 2, m
    rows = watching.rows()
    assert {r["source"] for r in rows} == {str(watching.folder / PAGES[2])}


def test_save_during_the_first_pass_is_not_missed(tmp_path):
    """The feed starts before the first full pass: a save while it runs is ingested, once settled."""
    from kbingest.pipeline.job.engine import IngestJob
    from kbingest.pipeline.jobstore.recovery import open_store
    from kbingest.pipeline.kb.table import connect
    from kbingest.pipeline.models import JobConfig
    from kbingest.pipeline.paths import Home

    folder = copy_pages(tmp_path / "docs", PAGES)
    home = Home(tmp_path / "home").ensure()
    job = IngestJob.create(
        home, open_store(home), JobConfig(sources=[str(folder)], kb="w", embedder="fake", watch=True)
    )
    th = threading.Thread(target=job.run)
    th.start()
    try:
        wait_for(lambda: job.snapshot().metrics.get("documents_found", 0) >= 1, 30, "the first pass")
        p = folder / PAGES[2]
        with open(p, "a") as fh:
            fh.write("\n\nSaved while the first pass ran: echidna.\n")

        def has_it():
            if not job.snapshot().message.startswith("watching"):
                return False
            rows = connect(home).open_table("w").to_arrow().select(["source", "text"]).to_pylist()
            return any("echidna" in r["text"] for r in rows if r["source"] == str(p))

        wait_for(has_it, 20, "the save to be ingested")
    finally:
        job.pause()
        th.join(30)
    assert not th.is_alive()


def test_source_folder_deleted_then_restored(watching_mass_removal_allowed, tmp_path):
    watching = watching_mass_removal_allowed
    shutil.rmtree(watching.folder)
    m = watching.after_one_burst()
    assert m["documents_removed"] == len(PAGES), m
    assert watching.rows() == []
    copy_pages(watching.folder, PAGES)  # the folder comes back: watched again, ingested again
    wait_for(
        lambda: watching.pass_done(2) and watching.metrics()["this_pass"].get("documents_added") == len(PAGES),
        15,
        "the restored folder to be ingested",
    )
    assert len(watching.rows()) == watching.initial_rows


def test_a_watched_source_that_empties_keeps_the_knowledge_base(watching):
    """The mass-removal guard holds in watch mode too: an unmounted share looks like a deleted folder."""
    shutil.rmtree(watching.folder)
    watching.after_one_burst()
    assert len(watching.rows()) == watching.initial_rows
    assert any(e.kind == "mass_removal_refused" for e in watching.job.errors)
