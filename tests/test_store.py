import json
import os
import stat
import threading

import pytest

from kbingest.pipeline.engine import IngestJob

from kbingest.pipeline.jobs import open_store
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
            store.update("j", lambda r: r.model_copy(update={
                "config": r.config.model_copy(update={"sources": r.config.sources + [str(i)]})}))

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
