"""`kbingest serve` (issue 15) against a real uvicorn on 127.0.0.1: jobs over HTTP, the status
contract at every poll, SSE, control with the CLI's semantics, metrics, notifications, security."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest
from conftest import REPO, copy_pages, run_cli
from live_server import ThreadServer, free_port
from test_crash_resume import waf_pages

pytestmark = pytest.mark.timeout(180)
API = "/api/ingestion"


@pytest.fixture
def corpus(tmp_path) -> Path:
    return copy_pages(tmp_path / "docs", waf_pages(24))


@pytest.fixture
def serve(tmp_path):
    """serve(**ServerConfig fields) -> a running ThreadServer on its own home; all stopped at teardown."""
    started = []

    def make(**cfg) -> ThreadServer:
        s = ThreadServer(tmp_path / f"home{len(started)}", **cfg)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


def start_job(client: httpx.Client, sources, kb="waf", **settings) -> str:
    r = client.post(f"{API}/kb/{kb}/jobs", json={"sources": [str(s) for s in sources], "embedder": "fake", **settings})
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"{API}/jobs/{r.json()['job_id']}"
    return r.json()["job_id"]


def wait_status(client: httpx.Client, job_id: str, want: set[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = client.get(f"{API}/jobs/{job_id}").json()["status"]
        if s["status"] in want:
            return s
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {want}")


def wait_running_with_progress(client, job_id, timeout=60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = client.get(f"{API}/jobs/{job_id}").json()["status"]
        if s["status"] == "running" and (s["metrics"].get("chunks_embedded") or 0) > 0:
            return s
        time.sleep(0.05)
    raise AssertionError("the job never got going")


# ---- jobs over HTTP ------------------------------------------------------------------------------
def test_job_over_http_completes_valid_at_every_poll(serve, corpus, status_validator):
    s = serve(allow_roots=[str(corpus)])
    with httpx.Client(base_url=s.url, timeout=30) as c:
        job_id = start_job(c, [corpus])
        polls, seen = 0, set()
        while True:
            r = c.get(f"{API}/kb/waf/status")
            assert r.status_code == 200
            body = r.json()
            status_validator.validate(body)
            polls += 1
            seen.add(body["status"])
            if body["status"] not in ("pending", "running"):
                break
            time.sleep(0.02)
        assert body["job_id"] == job_id and body["status"] == "completed", body
        assert body["metrics"]["chunks_indexed"] > 0 and polls > 1
        jobs = c.get(f"{API}/jobs").json()
        assert [j["job_id"] for j in jobs] == [job_id] and jobs[0]["config"]["embedder"] == "fake"
        hits = c.get(f"{API}/kb/waf/search", params={"q": "reliability", "k": 3}).json()
        assert len(hits) == 3 and {"source", "text", "score"} <= set(hits[0])
        assert c.get(f"{API}/kb/nope/search", params={"q": "x"}).json()["error"] == "not_found"
        assert c.get("/docs").status_code == 200
        assert f"{API}/kb/{{kb_id}}/status" in c.get("/openapi.json").json()["paths"]
    # the CLI sees what the server did: one store
    cli = run_cli("status", "--json", home=s.service.home.root)
    assert json.loads(cli.stdout)["status"] == "completed"


def test_errors_are_one_json_shape(serve, corpus):
    s = serve(allow_roots=[str(corpus)])
    with httpx.Client(base_url=s.url, timeout=30) as c:
        cases = [
            (c.get(f"{API}/jobs/nope"), 404, "not_found"),
            (c.get(f"{API}/kb/waf/status"), 404, "not_found"),
            (c.get(f"{API}/kb/b@d/status"), 422, "invalid_input"),
            (c.post(f"{API}/kb/bad name/jobs", json={"sources": [str(corpus)]}), 422, "invalid_input"),
            (c.post(f"{API}/kb/waf/jobs", json={"sources": [str(corpus)], "overlap_tokens": -1}), 422, "invalid_input"),
            (c.post(f"{API}/kb/waf/jobs", json={"sources": [str(corpus)], "unknown": 1}), 422, "invalid_input"),
            (c.post(f"{API}/kb/waf/jobs", json={"sources": [str(corpus / "missing")]}), 404, "not_found"),
            (c.post(f"{API}/jobs/nope/pause"), 404, "not_found"),
            (c.get("/nothing-here"), 404, "not_found"),
        ]
        for r, code, kind in cases:
            assert r.status_code == code, (r.request.url, r.text)
            assert set(r.json()) == {"error", "message"} and r.json()["error"] == kind, r.text


def test_sse_one_event_per_phase_change_ends_with_final(serve, corpus, monkeypatch, status_validator):
    monkeypatch.setenv("KBINGEST_FAKE_DELAY", "0.005")
    s = serve(allow_roots=[str(corpus)])
    with httpx.Client(base_url=s.url, timeout=60) as c:
        job_id = start_job(c, [corpus])
        events = []
        with c.stream("GET", f"{API}/jobs/{job_id}/events") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        polled = c.get(f"{API}/jobs/{job_id}").json()["status"]
    for e in events:
        status_validator.validate(e)
    assert events[-1]["status"] == "completed" and events[-1] == polled  # ends with the final status
    # every change of phase (the job's current phase, or a phase's status) is an event
    keys = [(e["status"], e["phase"], tuple(p["status"] for p in e["phase_details"])) for e in events]
    phases = [k[1] for k in keys]
    order = ["loading", "chunking", "embedding", "indexing", "completed"]
    assert phases == sorted(phases, key=order.index), phases
    assert {"embedding", "completed"} <= set(phases)
    for name in range(4):  # each phase is seen running, then completed
        assert any(k[2][name] == "running" for k in keys) and keys[-1][2][name] == "completed"


def test_pause_resume_cancel_have_the_cli_semantics(serve, corpus, monkeypatch):
    monkeypatch.setenv("KBINGEST_FAKE_DELAY", "0.02")
    s = serve(allow_roots=[str(corpus)])
    with httpx.Client(base_url=s.url, timeout=60) as c:
        job_id = start_job(c, [corpus])
        wait_running_with_progress(c, job_id)
        assert c.post(f"{API}/jobs/{job_id}/resume").json()["error"] == "wrong_state"  # it runs
        r = c.post(f"{API}/jobs/{job_id}/pause")  # answers once paused (CLI: exit 0 once paused)
        assert r.status_code == 200 and r.json()["status"] == "paused", r.text
        assert s.host.live(job_id) is None  # its thread has ended: checkpoint saved
        assert c.post(f"{API}/jobs/{job_id}/pause").json()["status"] == "paused"  # already paused: as the CLI
        r = c.post(f"{API}/jobs/{job_id}/resume")
        assert r.status_code == 202 and r.headers["location"].endswith(job_id)
        wait_running_with_progress(c, job_id)
        r = c.post(f"{API}/jobs/{job_id}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        assert c.post(f"{API}/jobs/{job_id}/cancel").json()["status"] == "cancelled"  # already: as the CLI
        for what in ("pause", "resume"):
            r = c.post(f"{API}/jobs/{job_id}/{what}")
            assert r.status_code == 409 and r.json()["error"] == "wrong_state", r.text
        done = start_job(c, [corpus], kb="other")
        wait_status(c, done, {"completed"})
        for what in ("pause", "cancel"):
            r = c.post(f"{API}/jobs/{done}/{what}")
            assert r.status_code == 409 and r.json()["error"] == "wrong_state", r.text


def test_a_running_jobs_status_over_http_carries_its_eta(serve, corpus, monkeypatch):
    """Issue 30 item 2: eta_seconds at the status's top level over HTTP, no phase's beyond it."""
    monkeypatch.setenv("KBINGEST_FAKE_DELAY", "0.02")
    s = serve(allow_roots=[str(corpus)])
    with httpx.Client(base_url=s.url, timeout=60) as c:
        job_id = start_job(c, [corpus])
        deadline, st = time.monotonic() + 60, {}
        while time.monotonic() < deadline:
            st = c.get(f"{API}/jobs/{job_id}").json()["status"]
            if st["status"] not in ("pending", "running") or st["eta_seconds"] is not None:
                break
            time.sleep(0.05)
        assert st["status"] == "running" and st["eta_seconds"] > 0, st
        assert all(p["eta_seconds"] is None or p["eta_seconds"] <= st["eta_seconds"] for p in st["phase_details"])
        assert c.post(f"{API}/jobs/{job_id}/cancel").json()["status"] == "cancelled"
        assert c.get(f"{API}/jobs/{job_id}").json()["status"]["eta_seconds"] is None  # not running: none


def test_a_job_of_another_process_is_seen_and_paused(serve, corpus, tmp_path):
    s = serve(allow_roots=[str(corpus)])
    env = dict(os.environ, KBINGEST_FAKE_DELAY="0.02")
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kbingest",
            "--home",
            str(s.service.home.root),
            "ingest",
            str(corpus),
            "--kb",
            "cli",
            "--batch",
            "--embedder",
            "fake",
        ],
        cwd=str(REPO),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with httpx.Client(base_url=s.url, timeout=60) as c:
            deadline = time.monotonic() + 60
            while True:
                r = c.get(f"{API}/kb/cli/status")
                if r.status_code == 200 and (r.json()["metrics"].get("chunks_embedded") or 0) > 0:
                    break
                assert time.monotonic() < deadline
                time.sleep(0.1)
            job_id = r.json()["job_id"]
            assert s.host.live(job_id) is None  # not this server's
            start = c.post(f"{API}/kb/waf/jobs", json={"sources": [str(corpus)], "embedder": "fake"})
            # one writer per knowledge base (issue 14): the second job is queued behind the CLI's, not refused
            assert start.status_code == 202, start.text
            queued = start.json()["job_id"]
            assert c.post(f"{API}/jobs/{queued}/cancel", params={"wait": "false"}).status_code in (200, 202)
            r = c.post(f"{API}/jobs/{job_id}/pause")
            assert r.status_code == 200 and r.json()["status"] == "paused"
        assert cli.wait(60) == 130  # the CLI's paused exit code
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()


# ---- metrics -------------------------------------------------------------------------------------
def test_metrics_parse_and_follow_the_job(serve, corpus, monkeypatch):
    from prometheus_client.parser import text_string_to_metric_families

    monkeypatch.setenv("KBINGEST_FAKE_DELAY", "0.01")
    s = serve(allow_roots=[str(corpus)])
    with httpx.Client(base_url=s.url, timeout=60) as c:
        job_id = start_job(c, [corpus])
        wait_running_with_progress(c, job_id)
        running = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
        assert {"kbingest_queue_depth", "kbingest_phase_items_processed", "kbingest_job_status"} <= set(running)
        queues = {smp.labels["queue"] for smp in running["kbingest_queue_depth"].samples}
        assert len(queues) >= 3  # the queues between the four phases
        c.post(f"{API}/jobs/{job_id}/pause")
        c.post(f"{API}/jobs/{job_id}/resume")
        final = wait_status(c, job_id, {"completed"})
        text = c.get("/metrics").text
    fams = {f.name: f for f in text_string_to_metric_families(text)}

    def value(name, **labels):
        found = [smp.value for smp in fams[name].samples if all(smp.labels.get(k) == v for k, v in labels.items())]
        assert len(found) == 1, (name, labels, fams[name].samples)
        return found[0]

    j = {"job_id": job_id, "kb": "waf"}
    for p in final["phase_details"]:
        assert value("kbingest_phase_items_processed", phase=p["name"], **j) == p["items_processed"]
        assert value("kbingest_phase_items_expected", phase=p["name"], **j) == p["items_total"]
    assert value("kbingest_job_status", kbingest_job_status="completed", **j) == 1
    assert value("kbingest_job_status", kbingest_job_status="running", **j) == 0
    assert value("kbingest_commits", **j) == final["metrics"]["commits"] > 0  # parsed name: no _total
    assert value("kbingest_embedding_seconds", **j) > 0
    assert value("kbingest_jobs", status="completed") == 1
    assert not [smp for smp in fams["kbingest_queue_depth"].samples]  # a job at rest has no queues


def test_queue_depths_come_from_the_snapshot_when_it_has_them(tmp_path):
    from test_dashboard_snapshots import running_snapshot

    from kbingest.app.server import EngineHost
    from kbingest.pipeline.service import Service

    host = EngineHost(Service(tmp_path / "h"), [])
    snap = running_snapshot()
    assert host.queue_depths(snap.job_id, snap) == {}  # not running here, no queue_* metrics
    snap = snap.model_copy(update={"metrics": {**snap.metrics, "queue_docs": 3, "queue_embedded": 0}})
    assert host.queue_depths(snap.job_id, snap) == {"docs": 3, "embedded": 0}


# ---- notifications -----------------------------------------------------------------------------
class _Receiver:
    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict] = []
        self.calls = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                outer.calls += 1
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.calls <= fail_first:
                    self.send_response(503)
                else:
                    outer.bodies.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def test_notify_posts_the_final_status_with_retries(serve, corpus, monkeypatch, status_validator, caplog):
    monkeypatch.setattr("kbingest.app.notify.BACKOFF_S", 0.05)
    flaky, dead = _Receiver(fail_first=2), f"http://127.0.0.1:{free_port()}/nobody"
    try:
        s = serve(allow_roots=[str(corpus)], notify=[flaky.url, dead])
        with httpx.Client(base_url=s.url, timeout=60) as c:
            job_id = start_job(c, [corpus])
            final = wait_status(c, job_id, {"completed"})
            deadline = time.monotonic() + 30
            while s.host.notifier.delivered + s.host.notifier.failed < 2:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert flaky.calls == 3 and len(flaky.bodies) == 1  # two 503s, then delivered
        status_validator.validate(flaky.bodies[0])
        assert flaky.bodies[0] == final
        assert s.host.notifier.failed == 1  # the dead URL: bounded tries, logged, the job unaffected
        assert "notification of job" in caplog.text and "failed after 4 attempt(s)" in caplog.text
    finally:
        flaky.close()


# ---- security ------------------------------------------------------------------------------------
def test_binds_loopback_by_default_and_refuses_other_addresses_without_token(tmp_path):
    from kbingest.app.cli import build_parser

    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"
    env = {k: v for k, v in os.environ.items() if k != "KBINGEST_TOKEN"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kbingest",
            "--home",
            str(tmp_path / "h"),
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=str(REPO),
    )
    assert r.returncode == 2 and "token" in r.stderr and "Traceback" not in r.stderr


def test_a_token_guards_every_endpoint_but_healthz(serve, corpus):
    s = serve(token="s3cret", allow_roots=[str(corpus)])
    paths = ["/docs", "/openapi.json", "/metrics", f"{API}/jobs", f"{API}/kb/waf/status", f"{API}/jobs/x/events"]
    with httpx.Client(base_url=s.url, timeout=30) as c:
        assert c.get("/healthz").status_code == 200
        for p in paths:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                r = c.get(p, headers=headers)
                assert r.status_code == 401 and r.json()["error"] == "unauthorized", (p, headers)
        r = c.post(f"{API}/kb/waf/jobs", json={"sources": [str(corpus)], "embedder": "fake"})
        assert r.status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert c.get("/metrics", headers=ok).status_code == 200
        assert c.get(f"{API}/jobs", headers=ok).json() == []


def test_sources_must_lie_under_an_allow_root_symlinks_resolved(serve, corpus, tmp_path):
    outside = copy_pages(tmp_path / "private")
    (corpus / "escape").symlink_to(outside, target_is_directory=True)
    elsewhere = tmp_path / "elsewhere"  # a folder of its own, away from both (in place of a system folder)
    elsewhere.mkdir()
    s = serve(allow_roots=[str(corpus)])
    with httpx.Client(base_url=s.url, timeout=30) as c:
        for src in (outside, corpus / "escape", corpus / ".." / "private", elsewhere):
            r = c.post(f"{API}/kb/waf/jobs", json={"sources": [str(src)], "embedder": "fake"})
            assert r.status_code == 403 and r.json()["error"] == "forbidden", (src, r.text)
        assert c.get(f"{API}/jobs").json() == []  # nothing was started
        start_job(c, [next(p for p in corpus.iterdir() if p.is_dir() and p.name != "escape")])


def test_without_allow_root_starting_jobs_is_off(serve, corpus):
    s = serve()
    with httpx.Client(base_url=s.url, timeout=30) as c:
        r = c.post(f"{API}/kb/waf/jobs", json={"sources": [str(corpus)], "embedder": "fake"})
        assert r.status_code == 405 and r.json()["error"] == "jobs_disabled" and "--allow-root" in r.json()["message"]


def test_request_bodies_are_capped(serve, corpus):
    s = serve(allow_roots=[str(corpus)])
    big = json.dumps({"sources": [str(corpus)] * 3000}).encode()
    assert len(big) > 64 * 1024
    with httpx.Client(base_url=s.url, timeout=30) as c:
        r = c.post(f"{API}/kb/waf/jobs", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"] == "too_large"

        def chunks():  # no Content-Length: counted as it streams in
            for i in range(0, len(big), 8192):
                yield big[i : i + 8192]

        r = c.post(f"{API}/kb/waf/jobs", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"] == "too_large"
        assert c.get(f"{API}/jobs").json() == []


def test_cors_is_off(serve):
    s = serve()
    with httpx.Client(base_url=s.url, timeout=30) as c:
        pre = c.options(
            f"{API}/jobs", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
        )
        got = c.get(f"{API}/jobs", headers={"Origin": "https://evil.example"})
    for r in (pre, got):
        assert not any(h.lower().startswith("access-control-") for h in r.headers), r.headers


# ---- crash -----------------------------------------------------------------------------------------
def test_sigkill_mid_job_then_serve_again_and_resume_gives_the_clean_table(tmp_path, corpus):
    from live_server import ProcessServer
    from test_crash_resume import table_rows

    clean = run_cli("ingest", str(corpus), "--kb", "k", "--batch", "--embedder", "fake", home=tmp_path / "clean")
    assert clean.returncode == 0, clean.stderr
    home = tmp_path / "crashed"
    env = {"KBINGEST_FAKE_DELAY": "0.01"}
    server = ProcessServer(home, "--allow-root", str(corpus), env=env)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            job_id = start_job(c, [corpus], kb="k", commit_rows=16)
            deadline = time.monotonic() + 60
            while (c.get(f"{API}/jobs/{job_id}").json()["status"]["metrics"].get("commits") or 0) < 2:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        server.kill()  # SIGKILL mid-job
        assert server.proc.returncode == -9
    finally:
        server.kill()
    server = ProcessServer(home, "--allow-root", str(corpus), env=env)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            was = c.get(f"{API}/jobs/{job_id}").json()["status"]
            assert was["status"] == "paused" and was["message"].startswith("interrupted"), was
            assert c.post(f"{API}/jobs/{job_id}/resume").status_code == 202
            final = wait_status(c, job_id, {"completed", "failed"})
            assert final["status"] == "completed", final
    finally:
        server.stop()
    assert sorted(table_rows(home)) == sorted(table_rows(tmp_path / "clean"))


# ---- raw HTTP/1.1 ----------------------------------------------------------------------------------
class _Responses:
    """HTTP/1.1 responses off one socket, in order: status, headers (lower-case names), body."""

    def __init__(self, sock) -> None:
        self.sock, self.buf = sock, b""

    def _more(self) -> None:
        data = self.sock.recv(65536)
        assert data, "the server closed the connection"
        self.buf += data

    def next(self) -> tuple[int, dict, bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = dict((k.lower(), v.strip()) for k, v in (ln.split(":", 1) for ln in lines[1:]))
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self._more()
        body, self.buf = self.buf[:length], self.buf[length:]
        return int(lines[0].split()[1]), headers, body
