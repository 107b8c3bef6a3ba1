"""Sealed boundaries (issue 27, items 3 and 4): the folders kbingest keeps in a home are never
followed when planted as symlinks; and the writer lock of a knowledge base lives with its table, so
two homes writing one --db location (a folder, or S3 on moto's server on 127.0.0.1) never duplicate a
row: the second waits as pending, or with --no-wait is refused naming the holder. `repair` honours --db."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import run_cli
from test_control import KB, Batch, corpus  # noqa: F401
from test_repair import _ingest_here
from test_storage import _table_ids, s3  # noqa: F401

from kbingest.pipeline.paths import Home, HomeError

FAKE = ("--embedder", "fake")
SLOW = {"KBINGEST_FAKE_DELAY": "0.01"}  # ~5 s of embedding for the corpus


def _one_line_refusal(r, *needles: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("kbingest: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr
    return r.stderr


def _plant(home: Path, name: str, outside: Path, victims: dict[str, str]) -> None:
    """HOME/NAME replaced by a symlink to OUTSIDE, which holds files named as kbingest's would be."""
    import shutil

    outside.mkdir(mode=0o700, exist_ok=True)
    for f, text in victims.items():
        (outside / f).write_text(text)
    if (home / name).is_dir():
        shutil.rmtree(home / name)
    os.symlink(outside, home / name, target_is_directory=True)


def _listing(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


# ---- item 3: every folder under HOME is opened without following a link ------------------------------
VICTIMS = {
    "locks": {"kb-k.lock": "precious", "embed.lock": "precious"},
    "kbstate": {"k.json": "precious"},
    "pending": {"k.optimize": "precious"},
    "damaged": {"keep.txt": "precious"},
}


@pytest.mark.parametrize("name", sorted(VICTIMS))
def test_a_home_folder_planted_as_a_symlink_is_refused_in_one_line(tmp_path, pages, name):
    """Every command refuses the home in one line (exit 2) and nothing in the folder the link points to
    is created, truncated, replaced or moved, whatever the command (ingest, repair)."""
    home = tmp_path / "h"
    assert run_cli("ingest", str(pages), "--kb", "k", "--batch", *FAKE, home=home).returncode == 0
    outside = tmp_path / "outside"
    _plant(home, name, outside, VICTIMS[name])
    for args in (["ingest", str(pages), "--kb", "k", "--batch", *FAKE], ["repair", "--kb", "k"], ["jobs"]):
        _one_line_refusal(run_cli(*args, home=home), f"{home / name} is a symbolic link")
    assert _listing(outside) == VICTIMS[name]


def test_locks_planted_after_the_check_are_never_written_through(tmp_path):
    """HOME/locks swapped for a link after the home was checked: the knowledge base's lock, a queue
    place, a probe and the embedding budget are refused; the files outside are neither created nor
    truncated."""
    from kbingest.pipeline.job.budget import EmbedBudget
    from kbingest.pipeline.jobstore import queue
    from kbingest.pipeline.locking import holder_pid, is_locked

    home = Home(tmp_path / "h").ensure()
    outside = tmp_path / "outside"
    _plant(home.root, "locks", outside, VICTIMS["locks"])
    for take in (
        lambda: queue.try_kb_lock(home, "k"),
        lambda: queue.hold_place(home, "k-1"),
        lambda: is_locked(home.kb_lock_file("k"), home.root),
        lambda: holder_pid(home.kb_lock_file("k"), home.root),
        lambda: EmbedBudget(home)._descriptors(),
    ):
        with pytest.raises(HomeError, match="locks is a symbolic link"):
            take()
    assert _listing(outside) == VICTIMS["locks"]


def test_kbstate_and_pending_planted_after_the_check_replace_nothing_outside(tmp_path, pages):
    from kbingest.pipeline.kb import kbstate

    _ingest_here(tmp_path / "h", pages)
    home = Home(tmp_path / "h")
    out_state, out_pending = tmp_path / "out-state", tmp_path / "out-pending"
    _plant(home.root, "kbstate", out_state, {"docs.json": "precious"})
    _plant(home.root, "pending", out_pending, {"docs.optimize": "precious"})
    with pytest.raises(HomeError, match="kbstate is a symbolic link"):
        kbstate.write(home, "docs", 8, ["id"], {})
    with pytest.raises(HomeError, match="kbstate is a symbolic link"):
        kbstate.read(home, "docs")
    kbstate.forget(home, "docs")  # best effort: never removes through the link
    with pytest.raises(HomeError, match="pending is a symbolic link"):
        os.close(home.open_file(home.optimize_marker("docs"), os.O_WRONLY | os.O_CREAT))
    with pytest.raises(HomeError, match="pending is a symbolic link"):
        home.remove_file(home.optimize_marker("docs"))
    assert _listing(out_state) == {"docs.json": "precious"}
    assert _listing(out_pending) == {"docs.optimize": "precious"}


def test_repair_never_moves_a_table_out_of_the_home_through_a_planted_damaged(tmp_path, pages):
    """HOME/damaged planted after the check: what repair sets aside stays in the home."""
    from kbingest.pipeline.kb.location import KbLocation
    from kbingest.pipeline.kb.repair import _Aside

    _ingest_here(tmp_path / "h", pages)
    home = Home(tmp_path / "h")
    outside = tmp_path / "outside"
    _plant(home.root, "damaged", outside, {})
    table = home.table_dir("docs")
    with pytest.raises(HomeError, match="damaged is a symbolic link"):
        _Aside(home, "docs", KbLocation.default(home)).move(table, "docs.lance")
    assert table.is_dir() and _listing(outside) == {}


# ---- item 4: the writer lock lives with the table -------------------------------------------------
def _ingest(src, home: Path, tmp: Path, db: str, name: str, env: dict | None = None, *extra: str) -> Batch:
    return Batch(
        ["--db", db, "ingest", str(src), "--kb", KB, "--batch", *FAKE, "--commit-rows", "32", *extra],
        home,
        tmp,
        dict(SLOW, **(env or {})),
        name,
    )


def _pending_for(b: Batch, other: Batch) -> list[dict]:
    """b's pending lines that name the other process's job (the holder)."""
    return [d for d in b.lines if d["status"] == "pending" and other.job_id in d["message"]]


def _two_homes_at_once(src, tmp: Path, db: str, env: dict | None = None) -> tuple[Batch, Batch]:
    a = _ingest(src, tmp / "home-a", tmp, db, "a", env)
    b = _ingest(src, tmp / "home-b", tmp, db, "b", env)
    assert a.finish(180) == 0, a.err_path.read_text()
    assert b.finish(180) == 0, b.err_path.read_text()
    return a, b


def _check_one_waited(a: Batch, b: Batch, ref: dict) -> None:
    waited = [(x, y) for x, y in ((a, b), (b, a)) if _pending_for(x, y)]
    assert len(waited) == 1, ([d["message"] for d in a.lines[:2]], [d["message"] for d in b.lines[:2]])
    second, first = waited[0]
    msg = _pending_for(second, first)[0]["message"]
    assert "writing knowledge base k at" in msg and "home-" in msg, msg
    assert second.lines[-1]["metrics"]["documents_skipped"] == len(ref["by_doc"])  # the first wrote them all
    assert first.lines[-1]["metrics"]["chunks_indexed"] == ref["count"]


def test_two_homes_on_one_db_folder_write_each_chunk_once(tmp_path, corpus):  # noqa: F811
    src, ref = corpus
    db = tmp_path / "shared-db"
    a, b = _two_homes_at_once(src, tmp_path, str(db))
    ids = _table_ids(str(db))
    assert len(ids) == len(set(ids)) == ref["count"], f"{len(ids) - len(set(ids))} duplicated ids"
    _check_one_waited(a, b, ref)
    assert (db / ".kbingest" / "locks" / f"{KB}.lock").is_file()


def test_no_wait_on_a_db_folder_another_home_writes_names_the_holder(tmp_path, corpus):  # noqa: F811
    src, ref = corpus
    db = str(tmp_path / "shared-db")
    a = _ingest(src, tmp_path / "home-a", tmp_path, db, "a", {"KBINGEST_FAKE_DELAY": "0.03"})
    assert a.wait_for(lambda d: d["status"] == "running"), a.err_path.read_text()
    r = run_cli("--db", db, "ingest", str(src), "--kb", KB, "--batch", "--no-wait", *FAKE, home=tmp_path / "home-b")
    a.p.terminate()
    a.finish(60)
    assert r.returncode == 1, (r.returncode, r.stderr)
    line = r.stderr.strip()
    assert "\n" not in line and "not started (--no-wait)" in line, r.stderr
    assert f"process {a.p.pid}" in line and a.job_id in line and str(tmp_path / "home-a") in line, line
    jobs = run_cli("jobs", "--json", home=tmp_path / "home-b")
    assert jobs.returncode == 0 and json.loads(jobs.stdout) == []  # refused: no job left behind


def test_repair_honours_db(tmp_path, pages):
    """`kbingest repair --db DIR` repairs the table in DIR (not the home's), sets the damaged parts
    aside beside it (DIR/.kbingest/damaged), and names --db in the command that indexes again."""
    db = tmp_path / "db"
    _ingest_here(tmp_path / "writer", pages, commit_rows=10, db=str(db))
    other = tmp_path / "other-home"
    os.truncate(sorted((db / "docs.lance" / "_versions").glob("*.manifest"))[0], 40)  # the newest: unreadable
    r = run_cli("repair", "--kb", "docs", "--db", str(db), home=other)
    assert r.returncode == 0, r.stderr
    assert "moved to" in r.stdout and f"--db {db}" in r.stdout, r.stdout
    assert any((db / ".kbingest" / "damaged").rglob("*.manifest"))
    assert not (other / "damaged").exists()
    r = run_cli("repair", "--kb", "docs", "--db", str(db), home=other)
    assert r.returncode == 0 and "is healthy" in r.stdout, r.stdout + r.stderr
    r = run_cli("repair", "--kb", "docs", home=other)  # no --db, no job of it in this home: the home's folder
    assert r.returncode == 2 and "no knowledge base 'docs'" in r.stderr


def test_repair_refuses_while_another_home_writes_the_db(tmp_path, pages):
    from kbingest.pipeline.kb.location import KbLocation

    db = tmp_path / "db"
    _ingest_here(tmp_path / "writer", pages, db=str(db))
    held = KbLocation(str(db)).writer_lock("docs", {"home": "/elsewhere", "job": "docs-1"})
    assert held.try_acquire()
    try:
        r = run_cli("repair", "--kb", "docs", "--db", str(db), home=tmp_path / "other")
    finally:
        held.release()
    assert r.returncode == 2, r.stderr
    assert f"process {os.getpid()}" in r.stderr and "/elsewhere" in r.stderr and "docs-1" in r.stderr, r.stderr


# ---- the S3 lease ---------------------------------------------------------------------------------
def _lease(s3, kb: str = KB, ttl: float = 30.0, **kw):
    from kbingest.pipeline.kb.location import KbLocation
    from kbingest.pipeline.locking import S3Lease

    return S3Lease(KbLocation(s3["uri"]), kb, {"home": kw.pop("home", "/h"), "job": kw.pop("job", "j")}, ttl=ttl, **kw)


def test_an_s3_lease_has_one_holder_at_a_time(s3):  # noqa: F811
    a, b = _lease(s3, job="job-a"), _lease(s3, job="job-b")
    assert a.try_acquire()
    try:
        assert not b.try_acquire()
        who = b.holder()
        assert f"process {os.getpid()}" in who and "job-a" in who and "lease renewed until" in who, who
    finally:
        a.release()
    assert b.try_acquire()  # released: free at once, no expiry to wait for
    b.release()


def test_an_expired_s3_lease_is_taken_over_and_its_old_holder_told(s3):  # noqa: F811
    """A holder whose renewals stop (a hung or dead process) loses its lease once it expires; the
    new holder takes it over with a put conditional on the ETag it read; the old holder, when it
    comes back, finds its lease taken and is told to stop writing."""
    import threading

    lost: list[str] = []
    a = _lease(s3, ttl=1.0, job="job-a", on_lost=lost.append)
    b = _lease(s3, ttl=30.0, job="job-b")
    assert a.try_acquire()
    a._stop.set()  # hung: no renewal
    a._thread.join()
    assert not b.try_acquire()  # not expired yet
    time.sleep(1.3)
    assert b.try_acquire()
    try:
        a._stop.clear()  # it comes back and renews: refused, told
        t = threading.Thread(target=a._renew_loop)
        t.start()
        t.join(10)
        assert lost and "job-b" in lost[0] and "stops writing" in lost[0], lost
        assert not a.held
        a.release()  # deletes nothing of b's
        c = _lease(s3, job="job-c")
        assert not c.try_acquire() and "job-b" in c.holder()
    finally:
        b.release()


def test_two_homes_on_one_s3_location_write_each_chunk_once(s3, tmp_path, corpus):  # noqa: F811
    src, ref = corpus
    a, b = _two_homes_at_once(src, tmp_path, s3["uri"], s3["env"])
    ids = _table_ids(s3["uri"])
    assert len(ids) == len(set(ids)) == ref["count"], f"{len(ids) - len(set(ids))} duplicated ids"
    _check_one_waited(a, b, ref)


def test_repair_on_s3_restores_the_last_readable_version(s3, tmp_path, pages):  # noqa: F811
    """`repair --db s3://...` checks the table there (healthy: nothing to do); with the newest data
    object deleted it restores the last version that reads whole, and moves nothing."""
    import boto3
    from test_storage import BUCKET, _objects

    home = tmp_path / "h"
    r = run_cli(
        "--db",
        s3["uri"],
        "ingest",
        str(pages),
        "--kb",
        KB,
        "--batch",
        *FAKE,
        "--commit-rows",
        "10",
        home=home,
        env=s3["env"],
    )
    assert r.returncode == 0, r.stderr
    other = tmp_path / "other"
    r = run_cli("repair", "--kb", KB, "--db", s3["uri"], home=other, env=s3["env"])
    assert r.returncode == 0 and "is healthy" in r.stdout, r.stdout + r.stderr
    prefix = s3["uri"].split(BUCKET + "/", 1)[1]
    c = boto3.client(
        "s3",
        endpoint_url=s3["endpoint"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    from kbingest.pipeline.kb.location import KbLocation

    newest = KbLocation(s3["uri"]).open_dataset(KB).get_fragments()[-1].data_files()[0].path
    c.delete_object(Bucket=BUCKET, Key=f"{prefix}/{KB}.lance/data/{newest.rsplit('/', 1)[-1]}")
    r = run_cli("repair", "--kb", KB, "--db", s3["uri"], home=other, env=s3["env"])
    assert r.returncode == 0 and "restored version" in r.stdout and f"--db {s3['uri']}" in r.stdout, r.stdout + r.stderr
    assert not any(k.startswith(f"{prefix}/.kbingest/locks/") for k in _objects(s3["endpoint"], prefix))  # released
    r = run_cli("search", "--kb", KB, "reliability", "--json", home=home, env=s3["env"])
    assert r.returncode == 0 and r.stdout.startswith("[{"), r.stderr
