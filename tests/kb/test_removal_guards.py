"""Issue 27, item 11: the mass-removal guard per source, and against the knowledge base's high-water
mark; one file reached through a bind mount (its (device, inode)) is one document."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from conftest import run_cli

from kbingest.pipeline.kb.table import KnowledgeBase
from kbingest.pipeline.paths import Home
from kbingest.pipeline.service import Service
from kbingest.pipeline.status import JobStatus

FAKE = ("--embedder", "fake")


def _pages(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / f"{n}.md").write_text(f"# Page {n}\n\nThe words of page {n}, about topic {n} alone.\n")
    return folder


def _sources(home, kb="docs") -> set[str]:
    return {
        os.path.basename(s.source)
        for s in KnowledgeBase(Home(home.root if isinstance(home, Home) else home), kb).stored_docs().values()
    }


def _ingest(svc: Service, sources, **settings):
    job = svc.start(svc.config([str(s) for s in sources], "docs", embedder="fake", **settings))
    snap = job.run()
    assert snap.status == JobStatus.COMPLETED, snap.error
    return job, snap


def test_an_emptied_source_among_several_keeps_its_documents(tmp_path):
    """An unmounted share among several sources is a minority of the knowledge base (2 of 8 here):
    the share of the whole never trips the guard, so the source's own emptiness does. Its documents
    stay, the job completes with a `mass_removal_refused` error naming the source (exit 3), and
    --allow-mass-removal lets the removal through."""
    home = tmp_path / "home"
    big = _pages(tmp_path / "big", [f"b{i}" for i in range(6)])
    share = _pages(tmp_path / "share", ["s0", "s1"])
    args = ("ingest", str(big), str(share), "--kb", "docs", "--batch", *FAKE)
    assert run_cli(*args, home=home).returncode == 0
    for p in share.iterdir():  # unmounted: the mount point is there, empty
        p.unlink()

    r = run_cli(*args, home=home)
    assert r.returncode == 3, r.stderr
    final = json.loads(r.stdout.splitlines()[-1])
    errors = [e for e in final["metrics"]["document_errors"] if e["kind"] == "mass_removal_refused"]
    assert len(errors) == 1 and errors[0]["path"] == str(share), errors
    assert "remove 2 of the 8 documents" in errors[0]["message"] and "--allow-mass-removal" in errors[0]["message"]
    assert final["metrics"]["documents_removed"] == 0
    assert _sources(home) == {f"b{i}.md" for i in range(6)} | {"s0.md", "s1.md"}

    (big / "b0.md").unlink()  # a deletion in a source that still has documents goes ahead meanwhile
    r = run_cli(*args, home=home)
    assert r.returncode == 3 and "b0.md" not in _sources(home) and {"s0.md", "s1.md"} <= _sources(home)

    r = run_cli(*args, "--allow-mass-removal", home=home)
    assert r.returncode == 0, r.stderr
    assert _sources(home) == {f"b{i}.md" for i in range(1, 6)}


def test_halving_run_after_run_is_measured_against_the_high_water_mark(tmp_path, home):
    """8 -> 4 -> 2 -> 1 -> 0 was never refused: each pass removed no more than half of what was left.
    Removals now add up against the document count of the last pass that added documents; the mark
    is kept apart from the remembered table state, so losing that (HOME/kbstate/docs.json) keeps it."""
    src = _pages(tmp_path / "src", [f"p{i}" for i in range(8)])
    svc = Service(home)
    _ingest(svc, [src])

    for i in range(4):
        (src / f"p{i}.md").unlink()
    job, snap = _ingest(svc, [src])
    assert snap.m.documents_removed == 4 and not job.errors  # half: allowed

    for i in (4, 5):
        (src / f"p{i}.md").unlink()
    (home.root / "kbstate" / "docs.json").unlink()  # the remembered state is lost: the mark is not
    job, snap = _ingest(svc, [src])
    assert not snap.m.documents_removed and len(_sources(home)) == 4
    [refusal] = [e for e in job.errors if e.kind == "mass_removal_refused"]
    assert "remove 2 of the 4 documents" in refusal.message and "held 8" in refusal.message
    assert "6 of them would be gone (75%" in refusal.message

    job, snap = _ingest(svc, [src], max_removal_share=1.0)  # --allow-mass-removal: meant; the mark is 2 now
    assert snap.m.documents_removed == 2 and _sources(home) == {"p6.md", "p7.md"}
    _pages(src, ["q0", "q1"])  # a pass that adds documents sets the mark: 4
    _ingest(svc, [src])
    (src / "p6.md").unlink()
    (src / "p7.md").unlink()
    job, snap = _ingest(svc, [src])
    assert snap.m.documents_removed == 2 and not job.errors and _sources(home) == {"q0.md", "q1.md"}


@pytest.fixture
def bind_mounted(tmp_path):
    """tmp_path/mnt: a bind mount of tmp_path/src (root only; unmounted afterwards)."""
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    _pages(src, ["a", "b", "c"])
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a bind mount needs root")
    r = subprocess.run(["mount", "--bind", str(src), str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mount --bind is not allowed here: {r.stderr.strip()}")
    try:
        yield src, mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_bind_mount_of_an_ingested_folder_is_the_same_documents(tmp_path, home, bind_mounted):
    """The canonical path cannot see through a bind mount (realpath keeps /mnt): the file's
    (device, inode) breaks the tie with the stored document of the same name, so the rows are not
    doubled; the stored source stays the path first given."""
    src, mnt = bind_mounted
    svc = Service(home)
    _ingest(svc, [src])
    rows = KnowledgeBase(home, "docs").count()
    job, snap = _ingest(svc, [mnt])
    assert snap.m.documents_skipped == 3 and not snap.m.documents_added and not job.errors
    kb = KnowledgeBase(home, "docs")
    assert kb.count() == rows
    assert {s.source for s in kb.stored_docs().values()} == {str(src / f"{n}.md") for n in "abc"}

    (mnt / "a.md").write_text("# Page a\n\nChanged through the other mount point.\n")
    job, snap = _ingest(svc, [mnt])
    assert snap.m.documents_replaced == 1 and not snap.m.documents_added
    assert KnowledgeBase(home, "docs").count() == rows
    assert len(KnowledgeBase(home, "docs").stored_docs()) == 3
