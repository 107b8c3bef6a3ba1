"""`kbingest --server URL`: the dashboard on a RemoteService (app/remote.py) over a real uvicorn on
127.0.0.1, driven with Pilot: a job running in the server is listed live, and p, r and c steer it
there. Also: p pauses a job running in another process of a local home (request_pause)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
from conftest import REPO, copy_pages
from live_server import ThreadServer
from test_crash_resume import waf_pages
from test_dashboard import SIZE, run, wait_until

from kbingest.app.dashboard import KbIngestApp
from kbingest.app.remote import RemoteService
from kbingest.app.screens import ConfirmCancelScreen
from kbingest.pipeline.service import Service, WrongState
from kbingest.pipeline.status import JobStatus

pytestmark = pytest.mark.timeout(180)
API = "/api/ingestion"


def server_status(url: str, job_id: str) -> dict:
    return httpx.get(f"{url}{API}/jobs/{job_id}", timeout=10).json()["status"]


def test_remote_dashboard_lists_and_steers_a_server_job(tmp_path, monkeypatch):
    monkeypatch.setenv("KBINGEST_FAKE_DELAY", "0.03")
    corpus = copy_pages(tmp_path / "docs", waf_pages(16))
    server = ThreadServer(tmp_path / "home", allow_roots=[str(corpus)])
    try:
        r = httpx.post(f"{server.url}{API}/kb/docs/jobs", json={"sources": [str(corpus)], "embedder": "fake"})
        job_id = r.json()["job_id"]
        remote = RemoteService(server.url)

        async def scenario() -> None:
            app = KbIngestApp(remote, None, poll_seconds=0.2, store_poll_seconds=0.2)
            async with app.run_test(size=SIZE) as pilot:
                await wait_until(
                    pilot,
                    lambda: (
                        app.selected is not None and app.selected.job_id == job_id and app.selected.running_elsewhere
                    ),
                    "the server's job, running",
                )
                assert app.home_label == server.url
                assert app.check_action("pause", ()) is True and app.check_action("resume", ()) is None
                await pilot.press("p")
                await wait_until(
                    pilot, lambda: server_status(server.url, job_id)["status"] == "paused", "paused in the server"
                )
                await wait_until(pilot, lambda: app.selected.status == JobStatus.PAUSED, "shown paused")
                assert app.check_action("resume", ()) is True
                await pilot.press("r")  # the server runs it again
                await wait_until(
                    pilot,
                    lambda: (
                        server.host.live(job_id) is not None
                        or server_status(server.url, job_id)["status"] == "completed"
                    ),
                    "running in the server",
                )
                await wait_until(pilot, lambda: app.selected.running_elsewhere, "shown running elsewhere")
                assert app._live is None  # nothing runs in the dashboard's process
                await pilot.press("c")
                await wait_until(pilot, lambda: isinstance(app.screen, ConfirmCancelScreen), "the confirmation")
                await pilot.press("y")
                await wait_until(
                    pilot, lambda: server_status(server.url, job_id)["status"] == "cancelled", "cancelled in the server"
                )
                await wait_until(pilot, lambda: app.selected.status == JobStatus.CANCELLED, "shown cancelled")
            lines = [e.text for e in app._events.of(job_id)]
            assert any("running → paused" in t for t in lines) and any("→ cancelled" in t for t in lines)

        run(scenario())
        with pytest.raises(WrongState):  # the service's typed errors, by kind, over HTTP
            remote.resume(job_id)
    finally:
        server.stop()


def test_local_dashboard_pauses_a_job_of_another_process(tmp_path):
    corpus = copy_pages(tmp_path / "docs", waf_pages(16))
    home = tmp_path / "home"
    env = dict(os.environ, KBINGEST_FAKE_DELAY="0.03")
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kbingest",
            "--home",
            str(home),
            "ingest",
            str(corpus),
            "--kb",
            "d",
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
        svc = Service(home)
        deadline = time.monotonic() + 60
        while True:
            jobs = [j for j in svc.jobs() if j.status.status == JobStatus.RUNNING] if home.exists() else []
            if jobs:
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)

        async def scenario() -> None:
            app = KbIngestApp(svc, None, store_poll_seconds=0.2)
            async with app.run_test(size=SIZE) as pilot:
                await wait_until(
                    pilot,
                    lambda: app.selected is not None and app.selected.running_elsewhere,
                    "the other process's job",
                )
                assert app.check_action("pause", ()) is True
                await pilot.press("p")
                await wait_until(pilot, lambda: app.selected.status == JobStatus.PAUSED, "paused")

        run(scenario())
        assert cli.wait(60) == 130
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()


def test_dashboard_on_an_unreachable_server_is_one_line_exit_2():
    from conftest import run_cli
    from live_server import free_port

    r = run_cli("--server", f"http://127.0.0.1:{free_port()}", timeout=60)
    assert (
        r.returncode == 2
        and "cannot reach the server at" in r.stderr
        and "(connection refused)" in r.stderr
        and "Traceback" not in r.stderr
    )
