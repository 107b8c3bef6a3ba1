"""Issue 18 item 8: a stopped engine must not look alive. `status` shows the heartbeat's age and calls
a running job "not responding" once its engine, still holding the home, has been silent a few
heartbeats; it recovers when the engine goes on."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from conftest import REPO, WAF, run_cli

from kbingest.pipeline.job.tracker import PhaseTracker
from kbingest.pipeline.jobstore.liveness import NOT_RESPONDING_AFTER_S, with_liveness
from kbingest.pipeline.models import JobConfig, JobRecord, iso, utcnow
from kbingest.pipeline.status import JobStatus


def _running_record(beat_age_s: float) -> JobRecord:
    t = PhaseTracker("j1", "docs")
    t.set_status(JobStatus.RUNNING, "ingesting")
    now = utcnow()
    return JobRecord(
        job_id="j1",
        config=JobConfig(sources=["/x"], kb="docs"),
        status=t.snapshot(),
        owner_pid=4242,
        created_at=iso(now),
        updated_at=iso(now),
        heartbeat_at=iso(now - timedelta(seconds=beat_age_s)),
    )


def test_heartbeat_age_is_shown_and_a_silent_engine_is_not_responding():
    fresh = with_liveness(_running_record(0.5), _running_record(0.5).status)
    assert fresh.metrics["heartbeat_age_seconds"] < 2 and "not_responding" not in fresh.metrics
    assert fresh.message == "ingesting"
    rec = _running_record(NOT_RESPONDING_AFTER_S + 3)
    stale = with_liveness(rec, rec.status)
    assert stale.status == JobStatus.RUNNING  # the contract's values: still running, but said plainly
    assert stale.metrics["not_responding"] is True and stale.metrics["heartbeat_age_seconds"] >= 8
    assert stale.message.startswith("not responding") and "4242" in stale.message and "ingesting" in stale.message


def _status(home) -> dict:
    r = run_cli("status", "--json", home=home, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _stop_outside_the_store_lock(pid: int, lock_file) -> None:
    """SIGSTOP the engine at an instant it does not hold the job store's lock (a stopped holder of
    that lock hangs every reader: item 6, not this test's subject)."""
    for _ in range(50):
        os.kill(pid, signal.SIGSTOP)
        fd = os.open(str(lock_file), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return
        except BlockingIOError:
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.05)
        finally:
            os.close(fd)
    raise AssertionError("the engine always held the store lock")


@pytest.mark.timeout(180)
def test_sigstopped_engine_is_not_responding_then_recovers(tmp_path):
    src = tmp_path / "docs"
    shutil.copytree(WAF / "reliability", src)
    home = tmp_path / "home"
    env = dict(os.environ, KBINGEST_FAKE_DELAY="0.05")  # a slow model: the job runs for a while
    engine = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kbingest",
            "--home",
            str(home),
            "ingest",
            str(src),
            "--kb",
            "docs",
            "--batch",
            "--embedder",
            "fake",
        ],
        cwd=str(REPO),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert time.monotonic() < deadline, "the job never started embedding"
            if (home / "jobs.json").exists():
                s = _status(home)
                if s["status"] == "running" and s["phase"] == "embedding":
                    break
            time.sleep(0.3)
        assert "heartbeat_age_seconds" in s["metrics"] and "not_responding" not in s["metrics"]

        _stop_outside_the_store_lock(engine.pid, home / "jobs.json.lock")
        stopped_at = time.monotonic()
        while True:
            s = _status(home)
            if s["metrics"].get("not_responding"):
                break
            assert time.monotonic() - stopped_at < NOT_RESPONDING_AFTER_S + 6, "a stopped engine still looks alive"
            time.sleep(0.3)
        assert s["status"] == "running" and s["message"].startswith("not responding")
        human = run_cli("status", home=home, timeout=60)
        assert (
            "not responding" in human.stdout and "heartbeat age seconds:" in human.stdout
        )  # issue 30: words, not keys

        os.kill(engine.pid, signal.SIGCONT)
        resumed_at = time.monotonic()
        while _status(home)["metrics"].get("not_responding"):
            assert time.monotonic() - resumed_at < 10, "the engine went on, the status still says not responding"
            time.sleep(0.3)
    finally:
        os.kill(engine.pid, signal.SIGCONT)
        engine.kill()
        engine.wait(30)


def test_a_busy_engine_with_nothing_new_to_say_keeps_its_heartbeat(home, tmp_path):
    """One slow embedding call (8 s, no progress meanwhile): the heartbeat still comes every few
    seconds, so a working engine is never called not responding."""
    import threading

    from kbingest.pipeline.embed.embedding import FakeEmbedder
    from kbingest.pipeline.job.engine import IngestJob
    from kbingest.pipeline.jobstore.recovery import effective_status, open_store

    src = tmp_path / "one"
    src.mkdir()
    (src / "a.md").write_text("# One\n\nA single short chunk.\n")
    store = open_store(home)
    job = IngestJob.create(
        home,
        store,
        JobConfig(sources=[str(src)], kb="docs", embedder="fake"),
        embedder_factory=lambda c: FakeEmbedder(delay=8.0),
    )
    runner = threading.Thread(target=job.run)
    runner.start()
    ages = []
    while runner.is_alive():
        rec = store.get(job.job_id)
        snap = effective_status(rec, home)
        if snap.status == JobStatus.RUNNING and "heartbeat_age_seconds" in snap.metrics:
            ages.append(snap.metrics["heartbeat_age_seconds"])
            assert not snap.metrics.get("not_responding"), snap.message
        time.sleep(0.2)
    runner.join()
    assert ages and max(ages) < NOT_RESPONDING_AFTER_S
