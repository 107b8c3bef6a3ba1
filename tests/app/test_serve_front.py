"""The status front of `kbingest serve` (app/status_front.py): a second process answers the polled
kb status and hands every other request over to the engine host with its connection. Against the
real command in a subprocess, on 127.0.0.1: the answers are the engine host's, on any mix of
requests on one connection; the token rule holds; either process dying leaves no hole."""
from __future__ import annotations

import json
import os
import signal
import socket
import time

import httpx
import pytest

from live_server import ProcessServer
from test_serve import API, _Responses, corpus, start_job, wait_status  # noqa: F401 (corpus: a fixture)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def server(tmp_path, corpus):
    started: list[ProcessServer] = []

    def make(*args: str, **env: str) -> ProcessServer:
        s = ProcessServer(tmp_path / f"home{len(started)}", "--allow-root", str(corpus), *args, env=env)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


def health(s: ProcessServer, **headers: str) -> dict:
    return httpx.get(s.url + "/healthz", headers=headers, timeout=10).json()


def polls_answered_by_front(s: ProcessServer, at_least: int) -> int:
    """The front's count, as the engine host last heard it (every half second)."""
    deadline = time.monotonic() + 5
    while True:
        n = health(s)["status_front"]["polls_answered"]
        if n >= at_least or time.monotonic() > deadline:
            return n
        time.sleep(0.1)


def request(target: str, *extra: str, method: str = "GET", body: bytes = b"") -> bytes:
    # addressed as a client of 127.0.0.1 does: without a token, another Host is refused (421, the Host rule)
    return "\r\n".join([f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", *extra, "", ""]).encode() + body


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()
    except FileNotFoundError:
        return False


def test_polls_are_the_fronts_every_other_request_the_engine_hosts_on_one_connection(server, corpus):
    s = server("--token", "t")
    auth = "Authorization: Bearer t"
    with httpx.Client(base_url=s.url, headers={"Authorization": "Bearer t"}, timeout=60) as c:
        job_id = start_job(c, [corpus])
        wait_status(c, job_id, {"completed"})
        final = c.get(f"{API}/jobs/{job_id}").json()["status"]  # the route's answer
    assert health(s)["status_front"]["pid"] != s.proc.pid
    before = polls_answered_by_front(s, 0)
    poll = request(f"{API}/kb/waf/status", auth)
    with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
        read = _Responses(sock).next
        for _ in range(5):
            sock.sendall(poll)
            status, headers, body = read()
            assert status == 200 and headers["content-type"] == "application/json" and "date" in headers
            assert json.loads(body) == final
        sock.sendall(poll[:30])  # a poll in two pieces
        time.sleep(0.2)
        sock.sendall(poll[30:])
        assert read()[0] == 200
        assert polls_answered_by_front(s, before + 6) >= before + 6, "the front answered the polls"
        # the same connection, now with requests that are the engine host's: it keeps the connection
        sock.sendall(request(f"{API}/jobs/{job_id}/pause", auth, "Content-Length: 0", method="POST"))
        status, _, body = read()
        assert status == 409 and json.loads(body)["error"] == "wrong_state"
        sock.sendall(poll + poll)  # pipelined, in order
        assert [read()[0], read()[0]] == [200, 200]
        sock.sendall(request(f"{API}/jobs/{job_id}", auth))
        status, _, body = read()
        assert status == 200 and json.loads(body)["status"] == final
    answered = polls_answered_by_front(s, before + 6)
    with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
        read = _Responses(sock).next
        sock.sendall(request(f"{API}/kb/waf/status"))  # no token: the engine host says 401
        status, headers, body = read()
        assert status == 401 and json.loads(body)["error"] == "unauthorized" and headers["www-authenticate"] == "Bearer"
    with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
        read = _Responses(sock).next
        sock.sendall(request(f"{API}/kb/waf/status", "Authorization: Bearer wrong"))
        assert read()[0] == 401
    with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
        read = _Responses(sock).next
        sock.sendall(request(f"{API}/kb/nope/status", auth))
        status, _, body = read()
        assert status == 404 and json.loads(body)["error"] == "not_found"
        sock.sendall(request(f"{API}/kb/nope/jobs", auth, "Content-Length: 70000", method="POST"))
        status, _, body = read()
        assert status == 413 and json.loads(body)["error"] == "too_large"
    time.sleep(0.6)
    assert polls_answered_by_front(s, answered) == answered, "no request the front may not answer was answered by it"
    from prometheus_client.parser import text_string_to_metric_families

    metrics = httpx.get(s.url + "/metrics", headers={"Authorization": "Bearer t"}, timeout=10).text
    [fam] = [f for f in text_string_to_metric_families(metrics) if f.name == "kbingest_status_front_polls_answered"]
    assert fam.samples[0].value == answered


def test_polls_through_the_front_follow_a_running_job_valid_at_every_poll(server, corpus, status_validator):
    s = server(KBINGEST_FAKE_DELAY="0.01")
    # two clients: a connection that carried any other request stays with the engine host
    with httpx.Client(base_url=s.url, timeout=60) as c, httpx.Client(base_url=s.url, timeout=60) as poller:
        job_id = start_job(c, [corpus])
        seen, progress, deadline = [], -1.0, time.monotonic() + 120
        while time.monotonic() < deadline:
            snap = poller.get(f"{API}/kb/waf/status").json()
            status_validator.validate(snap)
            assert snap["job_id"] == job_id and snap["progress"] >= progress
            progress = snap["progress"]
            seen.append(snap["status"])
            if snap["status"] == "completed":
                break
            time.sleep(0.05)
        assert seen[-1] == "completed" and "running" in seen
        assert poller.get(f"{API}/kb/waf/status").json() == c.get(f"{API}/jobs/{job_id}").json()["status"]
        with c.stream("GET", f"{API}/jobs/{job_id}/events") as events:  # SSE: the engine host's
            data = [json.loads(line[5:]) for line in events.iter_lines() if line.startswith("data:")]
        assert data and data[-1]["status"] == "completed"
    assert polls_answered_by_front(s, len(seen) // 2) >= len(seen) // 2


def test_if_the_front_dies_the_engine_host_answers_everything(server, corpus):
    s = server()
    with httpx.Client(base_url=s.url, timeout=60) as c:
        wait_status(c, start_job(c, [corpus]), {"completed"})
        assert c.get(f"{API}/kb/waf/status").status_code == 200
        front = health(s)["status_front"]["pid"]
        os.kill(front, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while health(s)["status_front"] is not None:
            assert time.monotonic() < deadline, "the engine host did not notice"
            time.sleep(0.1)
    for _ in range(3):  # new connections: the engine host accepts them now
        with httpx.Client(base_url=s.url, timeout=10) as c:
            assert c.get(f"{API}/kb/waf/status").json()["status"] == "completed"
    s.stop()
    assert s.proc.returncode == 0
    assert f"the status front (pid {front}) exited with -9: this process answers every request now" in s.stderr


def test_when_the_engine_host_is_killed_the_front_goes_and_the_port_is_free(server):
    s = server()
    front = health(s)["status_front"]["pid"]
    assert alive(front)
    s.kill()
    deadline = time.monotonic() + 10
    while alive(front):
        assert time.monotonic() < deadline, "the front outlived the engine host"
        time.sleep(0.05)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", s.port))  # nobody listens there any more


def test_sigterm_stops_both_processes_and_idle_connections_are_closed(server, corpus):
    s = server()
    with httpx.Client(base_url=s.url, timeout=60) as c:
        wait_status(c, start_job(c, [corpus]), {"completed"})
    front = health(s)["status_front"]["pid"]
    with socket.create_connection(("127.0.0.1", s.port), timeout=30) as idle, \
            socket.create_connection(("127.0.0.1", s.port), timeout=30) as slow:
        read = _Responses(idle).next
        idle.sendall(request(f"{API}/kb/waf/status"))
        assert read()[0] == 200
        # the other sends its poll a byte a second: never idle 5 s, but its head is not whole after 10 s
        began, closed_after = time.monotonic(), None
        for byte in request(f"{API}/kb/waf/status"):
            try:
                slow.sendall(bytes([byte]))
            except OSError:  # reset: closed
                closed_after = time.monotonic() - began
                break
            slow.settimeout(1.0)
            try:
                if slow.recv(1) == b"":
                    closed_after = time.monotonic() - began
                    break
            except socket.timeout:
                pass
        assert closed_after is not None and 9.5 < closed_after < 13, closed_after
        # by now the first has been idle more than the 5 s a connection may be (uvicorn's keep-alive, the front's)
        assert idle.recv(1) == b"", "an idle connection is closed"
    s.stop()
    assert s.proc.returncode == 0 and not alive(front)


def test_serve_without_the_front_answers_alike(tmp_path, corpus):
    s = ProcessServer(tmp_path / "home", "--allow-root", str(corpus), "--no-status-front")
    try:
        assert health(s)["status_front"] is None
        with httpx.Client(base_url=s.url, timeout=60) as c:
            job_id = start_job(c, [corpus])
            wait_status(c, job_id, {"completed"})
            assert c.get(f"{API}/kb/waf/status").json() == c.get(f"{API}/jobs/{job_id}").json()["status"]
    finally:
        s.stop()


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "kbingest", "--home", str(tmp_path / "h"), "serve", "--port",
                            str(port)], cwd=str(REPO), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert f"cannot serve on 127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr
