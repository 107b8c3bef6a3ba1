"""`kbingest --server URL COMMAND` (issue 37): every command runs on the server through its HTTP API,
and answers as the same command run locally on the server's home; what the server cannot do is
refused in one line (exit 2), never answered from the local home. Against an in-process uvicorn
(live_server.ThreadServer) and against `kbingest serve` in a subprocess; the CLI in a subprocess."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, copy_pages, run_cli
from live_server import ProcessServer, ThreadServer, free_port
from test_crash_resume import waf_pages

pytestmark = pytest.mark.timeout(240)


def lines_of(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def remote(url: str, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_cli("--server", url, *args, env=env, timeout=timeout)


def same_answer(url: str, home: Path, *args: str) -> subprocess.CompletedProcess:
    """The command on the server and on its home, locally: the same stdout, stderr and exit code."""
    there = remote(url, *args)
    here = run_cli(*args, home=home)
    assert (there.returncode, there.stdout, there.stderr) == (here.returncode, here.stdout, here.stderr), (
        args,
        there,
        here,
    )
    return there


def check_every_command(url: str, home: Path, corpus: Path, status_validator) -> None:
    # ingest --batch: the job runs in the server; the same JSON Lines and exit code as a local job's
    r = remote(url, "ingest", str(corpus), "--kb", "docs", "--batch", "--embedder", "fake")
    assert r.returncode == 0, r.stderr
    lines = lines_of(r.stdout)
    for line in lines:
        status_validator.validate(line)
    job_id = lines[-1]["job_id"]
    assert lines[-1]["status"] == "completed" and lines[-1]["metrics"]["chunks_indexed"] > 0
    assert f"kbingest: job {job_id}: " in r.stderr and "Traceback" not in r.stderr
    local = run_cli("ingest", str(corpus), "--kb", "here", "--batch", "--embedder", "fake", home=home)
    assert local.returncode == 0, local.stderr
    last = lines_of(local.stdout)[-1]
    for key in ("documents_total", "chunks_indexed", "documents_failed"):
        assert last["metrics"].get(key) == lines[-1]["metrics"].get(key), key
    # the server ran it, in its home: the local command sees it there
    assert json.loads(run_cli("status", job_id, "--json", home=home).stdout)["status"] == "completed"

    for args in (
        ["jobs"],
        ["jobs", "--json"],
        ["status"],
        ["status", "--json"],
        ["status", job_id],
        ["status", "--kb", "docs", "--json"],
        ["search", "--kb", "docs", "reliability pillars", "--json"],
        ["search", "--kb", "docs", "security", "-k", "3"],
        ["search", "--kb", "docs", "design principles", "--mode", "text", "--json"],
        ["status", "nope-job"],
        ["status", "--kb", "nothing"],
        ["search", "--kb", "nothing", "x"],
        ["pause", job_id],
        ["cancel", job_id],
    ):
        same_answer(url, home, *args)
    assert json.loads(remote(url, "jobs", "--json").stdout)[1]["job_id"] == job_id  # the newest first
    assert remote(url, "pause", job_id).returncode == 2  # a completed job: nothing to pause (409, as locally)

    # resume --batch: run again in the server (every document unchanged), followed to its end
    r = remote(url, "resume", job_id, "--batch")
    assert r.returncode == 0, r.stderr
    assert lines_of(r.stdout)[-1]["status"] == "completed"

    # KBINGEST_SERVER is --server
    via_env = run_cli("jobs", "--json", env={"KBINGEST_SERVER": url})
    assert via_env.returncode == 0 and via_env.stdout == run_cli("jobs", "--json", home=home).stdout


def check_refusals(url: str, corpus: Path) -> None:
    cases = [
        (["serve"], "does not run on a server"),
        (["drain", "some-job"], "has no drain"),
        (["repair", "--kb", "docs"], "has no repair"),
        (["--home", "/tmp/x", "jobs"], "--home is for a local home"),
        (["jobs", "--home", "/tmp/x"], "--home is for a local home"),
        (["search", "--kb", "docs", "x", "--db", "/tmp/x"], "--db is for a local home"),
        (["ingest", str(corpus), "--kb", "d", "--batch", "--no-wait"], "--no-wait is for a local home"),
        (["ingest", "docs", "--kb", "d", "--batch"], "give 'docs' as an absolute path"),
    ]
    for args, words in cases:
        r = remote(url, *args)
        assert r.returncode == 2, (args, r)
        assert r.stderr.count("\n") == 1 and words in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    r = run_cli("serve", env={"KBINGEST_SERVER": url}, timeout=60)
    assert r.returncode == 2 and "KBINGEST_SERVER" in r.stderr, r.stderr


def test_every_command_on_an_in_process_server(tmp_path, status_validator):
    corpus = copy_pages(tmp_path / "docs", waf_pages(8))
    server = ThreadServer(tmp_path / "home", allow_roots=[str(corpus)])
    try:
        check_every_command(server.url, server.service.home.root, corpus, status_validator)
        check_refusals(server.url, corpus)
    finally:
        server.stop()
    # nothing was answered from (or written to) the local home
    assert not (tmp_path / "default-home").exists()


def test_every_command_on_kbingest_serve(tmp_path, status_validator):
    corpus = copy_pages(tmp_path / "docs", waf_pages(8))
    home = tmp_path / "home"
    server = ProcessServer(home, "--allow-root", str(corpus))
    try:
        check_every_command(server.url, home, corpus, status_validator)
    finally:
        server.stop()
    assert not (tmp_path / "default-home").exists()


def wait_line(proc: subprocess.Popen, want, timeout: float = 90) -> dict:
    """Read the CLI's JSON Lines until one satisfies `want` (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        d = json.loads(line)
        if want(d):
            return d
    raise AssertionError("no such line")


def test_sigint_pauses_the_server_job_and_pause_cancel_steer_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KBINGEST_FAKE_DELAY", "0.03")  # the in-process server's fake model is slow
    corpus = copy_pages(tmp_path / "docs", waf_pages(16))
    server = ThreadServer(tmp_path / "home", allow_roots=[str(corpus)])
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kbingest",
                "--server",
                server.url,
                "ingest",
                str(corpus),
                "--kb",
                "docs",
                "--batch",
                "--embedder",
                "fake",
            ],
            cwd=str(REPO),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            first = wait_line(proc, lambda d: d["status"] == "running" and (d["metrics"].get("chunks_embedded") or 0))
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
        job_id = first["job_id"]
        assert proc.returncode == 130, err
        assert lines_of(out)[-1]["status"] == "paused"  # the last line: the job at rest
        assert f"resume with: kbingest --server {server.url} resume {job_id}" in err
        assert server.service.job(job_id).status.status.value == "paused"  # in the server, checkpoint saved

        # resumed over the API, then paused and cancelled by the CLI, as `kbingest pause` / `cancel` do locally
        resumed = subprocess.Popen(
            [sys.executable, "-m", "kbingest", "--server", server.url, "resume", job_id, "--batch"],
            cwd=str(REPO),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_line(resumed, lambda d: d["status"] == "running")
            p = remote(server.url, "pause", job_id)
            assert (p.returncode, p.stderr) == (0, f"kbingest: job {job_id} is paused\n"), p
            out, err = resumed.communicate(timeout=90)
            assert resumed.returncode == 130 and lines_of(out)[-1]["status"] == "paused", err
        finally:
            if resumed.poll() is None:
                resumed.kill()
        p = remote(server.url, "pause", job_id)
        assert (p.returncode, p.stderr) == (0, f"kbingest: job {job_id} is already paused\n"), p
        c = remote(server.url, "cancel", job_id)
        assert (c.returncode, c.stderr) == (0, f"kbingest: job {job_id} cancelled\n"), c
        r = remote(server.url, "resume", job_id, "--batch")
        assert r.returncode == 2 and "cancelled and cannot be resumed" in r.stderr, r
    finally:
        server.stop()


def test_server_errors_in_kbingest_words(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    r = remote(url, "jobs", timeout=60)
    assert r.returncode == 2 and r.stderr == f"kbingest: cannot reach the server at {url} (connection refused)\n"
    r = remote("127.0.0.1:8000", "jobs", timeout=60)
    assert r.returncode == 2 and "give the server's URL" in r.stderr

    corpus = copy_pages(tmp_path / "docs")
    outside = copy_pages(tmp_path / "elsewhere")
    server = ThreadServer(tmp_path / "home", allow_roots=[str(corpus)], token="s3cret")
    try:
        r = remote(server.url, "jobs")
        assert r.returncode == 2 and r.stderr == (
            f"kbingest: the server at {server.url} needs a token (--token or KBINGEST_TOKEN)\n"
        ), r.stderr
        r = remote(server.url, "status", "--token", "wrong")
        assert r.returncode == 2 and "refused the token" in r.stderr, r.stderr
        r = remote(
            server.url,
            "ingest",
            str(outside),
            "--kb",
            "d",
            "--batch",
            "--embedder",
            "fake",
            env={"KBINGEST_TOKEN": "s3cret"},
        )
        assert (
            r.returncode == 2
            and r.stderr.startswith(f"kbingest: the server at {server.url} refused: source ")
            and "--allow-root" in r.stderr
            and r.stderr.count("\n") == 1
        ), r.stderr
        assert remote(server.url, "--token", "s3cret", "jobs").returncode == 0
        r = run_cli("--server", server.url, "--token", "s3cret", "jobs")
        assert r.returncode == 0 and r.stderr == "kbingest: no jobs in this home yet\n", r.stderr
    finally:
        server.stop()


def test_dashboard_of_a_server_job_leaves_it_running_there_exit_0(tmp_path, monkeypatch, capsys):
    """`kbingest --server URL ingest ...` without --batch: the dashboard on the server, the job selected;
    quitting while the server still runs it is exit 0, saying so (not the exit code of a failed job)."""
    from kbingest.app import dashboard
    from kbingest.app.remote import RemoteJob, RemoteService
    from kbingest.pipeline.job.tracker import PhaseTracker
    from kbingest.pipeline.models import JobConfig
    from kbingest.pipeline.service import JobInfo
    from kbingest.pipeline.status import JobStatus

    tracker = PhaseTracker("d-1", "d")
    tracker.set_status(JobStatus.RUNNING, "loading")
    snap = tracker.snapshot()
    info = JobInfo(
        job_id="d-1",
        kb="d",
        config=JobConfig(sources=["/srv/d"], kb="d"),
        status=snap,
        created_at="2026-12-06T10:00:00Z",
        updated_at="2026-12-06T10:00:01Z",
    )
    service = RemoteService("http://127.0.0.1:9")
    monkeypatch.setattr(dashboard.KbIngestApp, "run", lambda self: None)  # the user quits at once
    assert dashboard.run_dashboard(service, RemoteJob(service, info, snap)) == 0
    assert "job d-1 goes on in http://127.0.0.1:9 (running)" in capsys.readouterr().err
