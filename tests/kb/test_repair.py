"""Issue 18 item 11: a damaged table (a data file or manifest deleted or truncated, `_versions/` gone).
Every command says which knowledge base is damaged in one line; `kbingest repair --kb NAME` brings
it back (the last readable version, or a re-created table) and says which; the next ingest makes
it whole again. The tables are real LanceDB tables, damaged on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import run_cli

from kbingest.pipeline.kb.table import KnowledgeBase
from kbingest.pipeline.paths import Home

NO_INTERNALS = ("Traceback", ".rs:", "cargo", "lance error")


def _ingest(home: Path, src: Path, *extra: str):
    return run_cli("ingest", str(src), "--kb", "docs", "--batch", "--embedder", "fake", *extra, home=home)


def _ingest_here(home: Path, src: Path, **kw) -> None:
    """The same job in this process (faster than the CLI, where the CLI is not the point)."""
    from kbingest.pipeline.job.engine import IngestJob
    from kbingest.pipeline.jobstore.recovery import open_store
    from kbingest.pipeline.models import JobConfig
    from kbingest.pipeline.status import JobStatus

    h = Home(home).ensure()
    snap = IngestJob.create(h, open_store(h), JobConfig(sources=[str(src)], kb="docs", embedder="fake", **kw)).run()
    assert snap.status == JobStatus.COMPLETED, snap.error


def _docs(home: Path) -> dict:
    return {d: (s.source, s.chunks) for d, s in KnowledgeBase(Home(home), "docs").stored_docs().items()}


@pytest.fixture
def indexed(tmp_path, pages):
    """A knowledge base of the pages, written in several commits (so it has several versions)."""
    home = tmp_path / "home"
    _ingest_here(home, pages, commit_rows=10)
    return home, pages, _docs(home)


def _table(home: Path) -> Path:
    return home / "lancedb" / "docs.lance"


def _newest(folder: Path, pattern: str) -> Path:
    if pattern == "*.manifest":  # LanceDB names manifests so that the newest sorts first
        return sorted(folder.glob(pattern))[0]
    return max(folder.glob(pattern), key=lambda p: p.stat().st_mtime_ns)


def _one_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert not any(s in r.stderr for s in NO_INTERNALS), r.stderr
    return lines[0]


def _damage(home: Path, how: str) -> None:
    t = _table(home)
    if how == "data file deleted":
        _newest(t / "data", "*.lance").unlink()
    elif how == "data file truncated":
        os.truncate(_newest(t / "data", "*.lance"), 100)
    elif how == "manifest truncated":
        os.truncate(_newest(t / "_versions", "*.manifest"), 40)


@pytest.mark.parametrize("how", ["data file deleted", "data file truncated", "manifest truncated"])
def test_damaged_table_is_named_and_repair_restores_the_last_readable_version(indexed, how):
    home, pages, before = indexed
    _damage(home, how)
    r = run_cli("search", "--kb", "docs", "reliability", home=home)
    assert r.returncode == 1
    line = _one_line(r)
    assert "knowledge base 'docs' is damaged" in line and "kbingest repair --kb docs" in line

    r = run_cli("repair", "--kb", "docs", home=home)
    assert r.returncode == 0, r.stderr
    assert "restored version" in r.stdout or "moved to" in r.stdout, r.stdout
    assert str(pages) in r.stdout  # the command that indexes again what a restore left out
    assert how != "manifest truncated" or any((home / "damaged").rglob("*.manifest"))  # set aside, not deleted
    r = run_cli("search", "--kb", "docs", "reliability", "--json", home=home)
    assert r.returncode == 0 and r.stdout.startswith("[{"), r.stderr

    _ingest_here(home, pages)
    assert _docs(home) == before  # whole again: nothing lost, nothing twice
    r = run_cli("repair", "--kb", "docs", home=home)
    assert r.returncode == 0 and "is healthy" in r.stdout


def test_versions_gone_ingest_says_damaged_then_repair_recreates_and_ingest_rebuilds(indexed):
    home, pages, before = indexed
    import shutil

    shutil.rmtree(_table(home) / "_versions")
    r = _ingest(home, pages)
    assert r.returncode == 1
    assert "knowledge base 'docs' is damaged" in r.stderr and "kbingest repair --kb docs" in r.stderr
    assert not any(s in r.stderr for s in NO_INTERNALS), r.stderr

    r = run_cli("repair", "--kb", "docs", home=home)
    assert r.returncode == 0, r.stderr
    assert "no version of it could be read" in r.stdout and "_versions" in r.stdout
    assert (home / "damaged").is_dir() and any((home / "damaged").rglob("docs.lance"))
    _ingest_here(home, pages)  # the next ingest rebuilds it
    assert _docs(home) == before


def test_repair_of_a_healthy_or_unknown_kb_changes_nothing(indexed):
    home, _, before = indexed
    r = run_cli("repair", "--kb", "docs", home=home)
    assert r.returncode == 0 and "is healthy" in r.stdout and "nothing to do" in r.stdout
    assert _docs(home) == before and not (home / "damaged").exists()
    r = run_cli("repair", "--kb", "nope", home=home)
    assert r.returncode == 2 and "no knowledge base 'nope'" in r.stderr


def test_repair_waits_for_no_engine(indexed):
    """Repair never races a running job: with the knowledge base's writer lock held (as a job writing
    it holds it) it refuses in one line, naming the holder, and moves nothing."""
    from kbingest.pipeline.jobstore import queue

    home, _, _ = indexed
    _damage(home, "data file deleted")
    lock = queue.try_kb_lock(Home(home), "docs")
    assert lock is not None
    try:
        r = run_cli("repair", "--kb", "docs", home=home)
    finally:
        lock.release()
    assert r.returncode == 2 and "a job is writing knowledge base 'docs'" in _one_line(r)
    assert f"process {os.getpid()}" in _one_line(r) and not (Path(home) / "damaged").exists()


def test_repair_changes_nothing_when_the_failure_is_not_damage(indexed, monkeypatch):
    """A table that fails to read for another reason (here: out of file descriptors) is not damaged:
    repair moves nothing aside and says why, rather than "repairing" a healthy table."""
    from lancedb.table import LanceTable

    from kbingest.pipeline.kb.repair import NotDamaged, repair

    home, _, before = indexed

    def no_fds(self, *a, **kw):
        raise RuntimeError(
            "lance error: LanceError(IO): Too many open files (os error 24), "
            "/root/.cargo/registry/src/index.crates.io-x/lance-io-13.0.0/src/local.rs:1:2"
        )

    monkeypatch.setattr(LanceTable, "count_rows", no_fds)
    with pytest.raises(NotDamaged, match="(?i)knowledge base .docs. cannot be read.*too many open files"):
        repair(Home(home), "docs")
    monkeypatch.undo()
    assert not (home / "damaged").exists() and _docs(home) == before


@pytest.mark.parametrize("how", ["data file deleted", "data file truncated"])
def test_an_unchanged_rerun_does_not_trust_its_memory_of_a_damaged_table(indexed, how):
    """Issue 27, item 10: what the table holds is remembered (HOME/kbstate) against its manifest, and a
    data file can be lost without a new manifest. The memory lists the data files and their sizes and
    is trusted only while each is there at its size (one stat each): here it is not, so the table is
    read, and the re-run says it is damaged and names `kbingest repair`, instead of "unchanged", exit 0."""
    home, pages, before = indexed
    state = home / "kbstate" / "docs.json"
    assert state.exists()  # the re-run would take the documents from here, opening no table
    _damage(home, how)
    r = _ingest(home, pages)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "knowledge base 'docs' is damaged" in r.stderr and "kbingest repair --kb docs" in r.stderr
    assert not any(s in r.stderr for s in NO_INTERNALS), r.stderr

    assert run_cli("repair", "--kb", "docs", home=home).returncode == 0
    _ingest_here(home, pages)
    assert _docs(home) == before
    r = _ingest(home, pages)  # remembered again, and trusted: the files are all there
    assert r.returncode == 0 and state.exists(), r.stderr
