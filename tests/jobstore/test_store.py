import errno
import json
import os
import signal
import stat
import subprocess
import threading
import time

import pytest

from kbingest.pipeline.job.engine import IngestJob
from kbingest.pipeline.jobstore.recovery import open_store
from kbingest.pipeline.models import JobConfig


def _job(home, store, kb="kb", job_id=None):
    return IngestJob.create(home, store, JobConfig(sources=["/tmp"], kb=kb, embedder="fake"), job_id=job_id)


def test_jobs_survive_reopen_and_sort_newest_first(home):
    store = open_store(home)
    _job(home, store, job_id="a-1")
    _job(home, store, job_id="b-2")
    again = open_store(home)
    assert {r.job_id for r in again.all()} == {"a-1", "b-2"}
    assert again.get("a-1").config.kb == "kb"
    assert again.all()[0].created_at >= again.all()[1].created_at


def test_files_are_private(home):
    store = open_store(home)
    _job(home, store)
    mode = stat.S_IMODE(os.stat(home.store_file).st_mode)
    assert mode & 0o077 == 0, oct(mode)


def test_concurrent_updates_lose_nothing(home):
    store = open_store(home)
    _job(home, store, job_id="j")

    def bump(i):
        for _ in range(20):
            store.update(
                "j",
                lambda r: r.model_copy(
                    update={"config": r.config.model_copy(update={"sources": r.config.sources + [str(i)]})}
                ),
            )

    threads = [threading.Thread(target=bump, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(open_store(home).get("j").config.sources) == 1 + 80  # its one source, and every append


def test_leftover_temp_files_are_swept(home):
    store = open_store(home)
    _job(home, store)
    junk = home.root / ".jobs.json.tmp-abc"
    junk.write_text("{half")
    open_store(home)
    assert not junk.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_store_is_moved_aside_and_rebuilt(home, damage):
    store = open_store(home)
    _job(home, store, job_id="x-1")
    raw = home.store_file.read_bytes()
    home.store_file.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"\x00\xffnot json at all")
    store2 = open_store(home)
    assert store2.recovered_from is not None and store2.recovered_from.exists()
    assert store2.recovered_from.read_bytes() != b""
    assert store2.all() == []  # no knowledge base to rebuild from in this home
    _job(home, store2, job_id="y-1")  # and it works again
    assert [r.job_id for r in open_store(home).all()] == ["y-1"]
    json.loads(home.store_file.read_text())


def test_control_requests_roundtrip(home):
    store = open_store(home)
    _job(home, store, job_id="j")
    store.request("j", "pause")
    assert open_store(home).control_of("j") == "pause"
    store.request("j", None)
    assert store.control_of("j") is None


# ------------------------------------------------------------- a malformed store (issue 18, item 10)


def _with_job_then(home, edit):
    """A store holding one good job, then `edit(data)` of its parsed JSON written back."""
    store = open_store(home)
    _job(home, store, job_id="good-1")
    _job(home, store, job_id="bad-1")
    data = json.loads(home.store_file.read_text())
    text = edit(data)
    home.store_file.write_text(text if isinstance(text, str) else json.dumps(data))


def _bad_record(data, change):
    rec = next(r for r in data["jobs"].values() if r["job_id"] == "bad-1")
    change(rec)


MALFORMED = {
    "jobs-is-a-list": (lambda d: '{"jobs": []}', []),
    "record-is-a-string": (lambda d: '{"jobs": {"1": "x"}}', []),
    "deeply-nested": (lambda d: "[" * 100_000, []),
    "record-without-config": (lambda d: _bad_record(d, lambda r: r.pop("config")), ["good-1"]),
    "status-bogus": (lambda d: _bad_record(d, lambda r: r["status"].update(status="bogus")), ["good-1"]),
    "key-not-a-number": (lambda d: '{"jobs": {"one": {"job_id": "x"}}}', []),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_a_malformed_store_is_moved_aside_and_rebuilt_keeping_valid_records(home, case):
    edit, kept = MALFORMED[case]
    _with_job_then(home, edit)
    damaged = home.store_file.read_bytes()
    store = open_store(home)
    assert store.recovered_from is not None and store.recovered_from.read_bytes() == damaged
    assert [r.job_id for r in store.all()] == kept  # what validates is kept, the rest moved aside
    _job(home, store, job_id="after-1")
    assert {r.job_id for r in open_store(home).all()} == set(kept) | {"after-1"}


def test_a_malformed_record_is_rebuilt_from_the_knowledge_base(home, pages):
    """The only record of a knowledge base does not validate: the knowledge base in LanceDB gives
    it back as a recovered job, as for a truncated store."""
    store = open_store(home)
    IngestJob.create(home, store, JobConfig(sources=[str(pages)], kb="docs", embedder="fake")).run()
    data = json.loads(home.store_file.read_text())
    for r in data["jobs"].values():
        r["status"]["status"] = "bogus"
    home.store_file.write_text(json.dumps(data))
    again = open_store(home)
    assert again.recovered_from is not None
    assert [(r.job_id, r.status.status.value) for r in again.all()] == [("docs-recovered", "completed")]


def test_a_malformed_store_through_the_cli_is_one_line_and_a_working_store(home):
    from conftest import run_cli

    _with_job_then(home, lambda d: "[" * 100_000)
    r = run_cli("jobs", home=home.root)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert all(line.startswith("kbingest: ") for line in lines), r.stderr
    assert sum("moved aside" in line for line in lines) == 1


# ------------------------------------------------------------------ disk full (issue 18, item 9)


def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_is_a_typed_one_line_error_and_the_old_store_stands(home, monkeypatch):
    from kbingest.pipeline.jobstore.store import StoreWriteError

    store = open_store(home)
    _job(home, store, job_id="j")
    before = home.store_file.read_bytes()
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(StoreWriteError) as e:
        store.request("j", "pause")
    assert "disk is full" in str(e.value) and "\n" not in str(e.value) and e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert home.store_file.read_bytes() == before
    assert not list(home.root.glob(".jobs.json.tmp-*"))  # no half-written temp file left behind
    assert open_store(home).control_of("j") is None


def test_disk_full_at_the_final_checkpoint_is_one_line_exit_1(home, pages, monkeypatch, capsys):
    """The job's work is done, its last status cannot be saved: the CLI says so in one line, exit 1."""
    from kbingest.app import cli
    from kbingest.pipeline.jobstore.store import StoreWriteError

    real_finish = IngestJob._finish

    def finish_on_a_full_disk(self):
        monkeypatch.setattr(os, "fsync", _enospc)
        real_finish(self)

    monkeypatch.setattr(IngestJob, "_finish", finish_on_a_full_disk)
    store = open_store(home)
    with pytest.raises(StoreWriteError):
        IngestJob.create(home, store, JobConfig(sources=[str(pages)], kb="docs", embedder="fake")).run()
    monkeypatch.setattr(os, "fsync", os.fsync)
    code = cli.main(["--home", str(home.root), "ingest", str(pages), "--kb", "docs2", "--batch", "--embedder", "fake"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("kbingest: cannot save the job store")


# ----------------------------------------------------- a held lock never hangs (issue 18, item 6)


@pytest.fixture
def held_lock(home):
    """`flock HOME/jobs.json.lock sleep 60`, as from another shell (or a Ctrl-Z'd engine)."""
    from kbingest.pipeline.locking import lock_holder

    store = open_store(home)
    _job(home, store, job_id="j")
    p = subprocess.Popen(["flock", "-o", str(home.store_lock_file), "sleep", "60"], start_new_session=True)
    fd = os.open(home.store_lock_file, os.O_RDONLY)
    try:
        deadline = time.monotonic() + 10
        while lock_holder(fd) != p.pid:
            assert time.monotonic() < deadline, "flock did not take the lock"
            time.sleep(0.02)
        os.close(fd)
        yield p
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def test_readers_answer_from_the_last_store_file_and_say_it_may_be_stale(home, held_lock):
    from conftest import run_cli

    for args in (["status"], ["jobs"], ["status", "j", "--json"], ["jobs", "--json"]):
        t0 = time.monotonic()
        r = run_cli(*args, home=home.root, timeout=30)
        took = time.monotonic() - t0
        assert r.returncode == 0, r.stderr
        assert "j" in r.stdout and took < 8, took
        assert r.stderr.count("\n") == 1 and "may be stale" in r.stderr
        assert f"process {held_lock.pid} (flock)" in r.stderr


def test_a_writer_waits_a_bounded_time_then_fails_naming_the_holder(home, held_lock, monkeypatch):
    from kbingest.pipeline.jobstore import store as store_mod
    from kbingest.pipeline.jobstore.store import StoreBusy

    store = open_store(home)
    assert store.stale
    monkeypatch.setattr(store_mod, "WRITE_WAIT_S", 0.5)
    t0 = time.monotonic()
    with pytest.raises(StoreBusy) as e:
        store.request("j", "cancel")
    assert time.monotonic() - t0 < 3
    msg = str(e.value)
    assert f"process {held_lock.pid} (flock)" in msg and "\n" not in msg and "nothing was changed" in msg
    os.killpg(held_lock.pid, signal.SIGKILL)  # flock -o: the lock goes with it
    held_lock.wait()
    assert open_store(home).control_of("j") is None  # nothing was written


def test_a_writer_through_the_cli_fails_cleanly(home, held_lock):
    from conftest import run_cli

    from kbingest.pipeline.jobstore import store as store_mod

    t0 = time.monotonic()
    r = run_cli("cancel", "j", home=home.root, timeout=60)
    assert time.monotonic() - t0 < store_mod.READ_WAIT_S + store_mod.WRITE_WAIT_S + 5
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"kbingest: the job store is locked by process {held_lock.pid}")
