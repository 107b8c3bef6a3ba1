"""`kbingest serve` as one plain process (issue 29): ETag and 304, the long poll, the rate limit,
SSE through pause and resume with Last-Event-ID, the OpenAPI's errors, /docs offline, the lines an
operator reads, and (kept from the retired status front's tests) a mix of requests on one
connection, the token, 404, 413, SIGTERM, idle connections and a port in use, against the command."""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time

import httpx
import pytest
from live_server import ProcessServer
from test_serve import API, _Responses, corpus, serve, start_job, wait_running_with_progress, wait_status  # noqa: F401

pytestmark = pytest.mark.timeout(180)


def request(target: str, *extra: str, method: str = "GET", body: bytes = b"") -> bytes:
    return "\r\n".join([f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", *extra, "", ""]).encode() + body


# ---- ETag, 304, the long poll ---------------------------------------------------------------------
def test_status_and_jobs_carry_an_etag_and_answer_304(serve, corpus):
    s = serve(allow_roots=[str(corpus)])
    with httpx.Client(base_url=s.url, timeout=60) as c:
        wait_status(c, start_job(c, [corpus]), {"completed"})
        for path in (f"{API}/kb/waf/status", f"{API}/jobs"):
            r = c.get(path)
            tag = r.headers["etag"]
            assert r.status_code == 200 and tag.startswith('"') and r.json()
            again = c.get(path, headers={"If-None-Match": tag})
            assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == tag
            assert c.get(path, headers={"If-None-Match": '"other"'}).status_code == 200


def test_a_long_poll_answers_at_the_change_or_304_when_the_wait_runs_out(serve, corpus, monkeypatch):
    monkeypatch.setenv("KBINGEST_FAKE_DELAY", "0.02")
    s = serve(allow_roots=[str(corpus)])
    with httpx.Client(base_url=s.url, timeout=60) as c:
        job_id = start_job(c, [corpus])
        wait_running_with_progress(c, job_id)
        r = c.get(f"{API}/kb/waf/status")
        began = time.monotonic()
        changed = c.get(f"{API}/kb/waf/status", params={"wait": 20}, headers={"If-None-Match": r.headers["etag"]})
        assert changed.status_code == 200 and changed.headers["etag"] != r.headers["etag"]
        assert time.monotonic() - began < 15, "answered at the change, not at the end of the wait"
        wait_status(c, job_id, {"completed"})
        tag = c.get(f"{API}/kb/waf/status").headers["etag"]
        began = time.monotonic()
        quiet = c.get(f"{API}/kb/waf/status", params={"wait": 1.5}, headers={"If-None-Match": tag})
        waited = time.monotonic() - began
        assert quiet.status_code == 304 and 1.4 <= waited < 30, waited
        bad = c.get(f"{API}/kb/waf/status", params={"wait": -1})
        assert bad.status_code == 422 and bad.json()["error"] == "invalid_input"


def asgi_get(app, path: str, times: int, client: str, headers: dict | None = None) -> list[httpx.Response]:
    """`times` GETs through the app's ASGI interface as if from `client` (an address a test on
    127.0.0.1 cannot have)."""
    import asyncio

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, client=(client, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            return [await c.get(path, headers=headers or {}) for _ in range(times)]

    return asyncio.run(run())


def test_a_client_over_the_rate_limit_gets_429_with_retry_after_and_304s_are_free(serve, corpus):
    s = serve(allow_roots=[str(corpus)], rate_limit=5)  # burst 10
    far = "192.0.2.7"  # a client on the network (TEST-NET-1)
    tag = asgi_get(s.app, f"{API}/jobs", 1, far)[0].headers["etag"]
    conditional = [r.status_code for r in asgi_get(s.app, f"{API}/jobs", 40, far, {"If-None-Match": tag})]
    assert conditional == [304] * 40, "a poller that sends If-None-Match is not counted"
    plain = asgi_get(s.app, f"{API}/jobs", 40, far)
    limited = [r for r in plain if r.status_code == 429]
    assert limited and plain[0].status_code == 200
    assert limited[0].json()["error"] == "rate_limited" and int(limited[0].headers["retry-after"]) >= 1
    assert asgi_get(s.app, "/healthz", 1, far)[0].status_code == 200  # never limited
    other = asgi_get(s.app, f"{API}/jobs", 1, "192.0.2.8")[0]
    assert other.status_code == 200, "each address has its own budget"
    time.sleep(float(limited[-1].headers["retry-after"]) + 0.5)
    assert asgi_get(s.app, f"{API}/jobs", 1, far)[0].status_code == 200


def test_loopback_peers_are_not_rate_limited(serve, corpus):
    """This machine's own clients, or a reverse proxy on it (which sees the real addresses and limits
    them itself): the bench's 50 pollers on 127.0.0.1 run against the default settings."""
    s = serve(allow_roots=[str(corpus)], rate_limit=5)
    with httpx.Client(base_url=s.url, timeout=60) as c:
        assert [c.get(f"{API}/jobs").status_code for _ in range(40)] == [200] * 40
    assert [r.status_code for r in asgi_get(s.app, f"{API}/jobs", 40, "::1")] == [200] * 40


# ---- slow clients -----------------------------------------------------------------------------------
def test_slow_header_clients_do_not_starve_a_poller_and_connections_are_bounded(serve, corpus, monkeypatch):
    from kbingest.app import server as server_module

    monkeypatch.setattr(server_module, "MAX_CONNECTIONS", 16)
    s = serve(allow_roots=[str(corpus)])
    stop = threading.Event()
    slow = [socket.create_connection(("127.0.0.1", s.port), timeout=30) for _ in range(6)]

    def trickle() -> None:  # a header byte every 0.2 s, never the blank line that ends them
        head = request(f"{API}/jobs")[:-2]
        i = 0
        while not stop.is_set():
            for sock in slow:
                sock.sendall(head[i : i + 1] if i < len(head) else b"a")
            i += 1
            stop.wait(0.2)

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    idle: list[socket.socket] = []
    try:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            took = []
            for _ in range(20):  # a poller at 10 Hz while six clients send their headers a byte at a time
                began = time.monotonic()
                assert c.get(f"{API}/jobs").status_code == 200
                took.append(time.monotonic() - began)
                time.sleep(0.1)
            assert max(took) < 5, took
        # past MAX_CONNECTIONS open connections (slow and idle ones count), a request is answered 503 at once
        idle = [socket.create_connection(("127.0.0.1", s.port), timeout=30) for _ in range(12)]
        deadline = time.monotonic() + 30  # once the server has accepted them all
        while (r := httpx.get(f"{s.url}{API}/jobs", timeout=30)).status_code != 503:
            assert r.status_code == 200 and time.monotonic() < deadline, r.status_code
            time.sleep(0.2)
    finally:
        stop.set()
        trickler.join(10)
        for sock in slow + idle:
            sock.close()
    deadline = time.monotonic() + 30
    while httpx.get(f"{s.url}{API}/jobs", timeout=30).status_code != 200:  # the server holds them no more
        assert time.monotonic() < deadline
        time.sleep(0.2)


# ---- SSE through pause and resume -----------------------------------------------------------------
def _events(lines):
    """(id, data) of each event, then None for a keep-alive comment."""
    ident = None
    for line in lines:
        if line.startswith(": keep-alive"):
            yield None
        elif line.startswith("id:"):
            ident = line[3:].strip()
        elif line.startswith("data:"):
            yield ident, json.loads(line[5:])


def test_sse_follows_a_job_through_pause_and_resume(serve, corpus, monkeypatch):
    from kbingest.app import server as server_module

    monkeypatch.setenv("KBINGEST_FAKE_DELAY", "0.02")
    monkeypatch.setattr(server_module, "SSE_KEEPALIVE_S", 0.5)
    s = serve(allow_roots=[str(corpus)])
    seen: list = []
    with httpx.Client(base_url=s.url, timeout=60) as c:
        job_id = start_job(c, [corpus])
        wait_running_with_progress(c, job_id)

        def watch() -> None:
            with httpx.stream("GET", f"{s.url}{API}/jobs/{job_id}/events", timeout=120) as r:
                for e in _events(r.iter_lines()):
                    seen.append(e)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        assert c.post(f"{API}/jobs/{job_id}/pause").json()["status"] == "paused"
        deadline = time.monotonic() + 30
        while sum(1 for e in seen if e is None) < 2:  # paused: the stream stays open, kept alive
            assert time.monotonic() < deadline and watcher.is_alive(), seen
            time.sleep(0.1)
        handle = s.service.resume(job_id)  # resumed (here by another engine host: the store shows it)
        runner = threading.Thread(target=handle.run, daemon=True)
        runner.start()
        watcher.join(120)
        runner.join(60)
    statuses = [e[1]["status"] for e in seen if e is not None]
    assert statuses[-1] == "completed" and not watcher.is_alive()
    paused_at = statuses.index("paused")
    assert "running" in statuses[paused_at:], statuses  # the resume was seen on the same stream
    ids = [e[0] for e in seen if e is not None]
    assert len(set(ids)) == len(ids)


def test_last_event_id_resumes_a_dropped_stream_without_a_gap(serve, corpus, monkeypatch):
    monkeypatch.setenv("KBINGEST_FAKE_DELAY", "0.02")
    s = serve(allow_roots=[str(corpus)])
    with httpx.Client(base_url=s.url, timeout=60) as c:
        job_id = start_job(c, [corpus])
        wait_running_with_progress(c, job_id)
        first: list = []
        with c.stream("GET", f"{API}/jobs/{job_id}/events") as r:  # dropped after two events
            for e in _events(r.iter_lines()):
                if e is not None:
                    first.append(e)
                if len(first) == 2:
                    break
        time.sleep(1.5)  # events go by meanwhile
        rest: list = []
        with c.stream("GET", f"{API}/jobs/{job_id}/events", headers={"Last-Event-ID": first[-1][0]}) as r:
            rest = [e for e in _events(r.iter_lines()) if e is not None]
        whole = [
            e for e in _events(_lines_of(c.get(f"{API}/jobs/{job_id}/events", headers={"Last-Event-ID": first[0][0]})))
        ]
    boot, n = first[-1][0].split(".")
    numbers = [int(e[0].split(".")[1]) for e in rest]
    assert numbers == list(range(int(n) + 1, int(n) + 1 + len(numbers))), "every event after the last one seen"
    assert rest[-1][1]["status"] == "completed"
    assert [e[0] for e in whole][: len(rest) + 1][1:] == [e[0] for e in rest], "the same journal"


def _lines_of(r: httpx.Response):
    return r.text.splitlines()


# ---- the OpenAPI, /docs offline --------------------------------------------------------------------
def test_every_route_documents_its_statuses_with_the_one_error_schema(serve, corpus, tmp_path):
    import jsonschema

    s = serve(token="t", allow_roots=[str(corpus)])
    with httpx.Client(base_url=s.url, headers={"Authorization": "Bearer t"}, timeout=60) as c:
        spec = c.get("/openapi.json").json()
        error = spec["components"]["schemas"]["Error"]
        kinds = set(error["properties"]["error"]["enum"])
        assert {"not_found", "unauthorized", "wrong_host", "too_large", "rate_limited", "invalid_input"} <= kinds
        for path, ops in spec["paths"].items():
            for method, op in ops.items():
                for code in ("401", "421", "429", "500"):
                    assert code in op["responses"] or (path, code) == ("/healthz", "401"), (method, path, code)
                for code, resp in op["responses"].items():
                    if int(code) >= 400:
                        ref = resp["content"]["application/json"]["schema"]["$ref"]
                        assert ref.endswith("/Error"), (path, code)
        post = spec["paths"][API + "/kb/{kb_id}/jobs"]["post"]["responses"]
        assert {"202", "403", "404", "405", "409", "413", "422"} <= set(post) and "Location" in post["202"]["headers"]
        ev = spec["paths"][API + "/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
        assert "text/event-stream" in ev
        # real answers, each checked against what the spec says of its route and status
        schema = {"$ref": "#/components/schemas/Error", "components": spec["components"]}
        answers = [
            ("get", API + "/jobs/{job_id}", c.get(f"{API}/jobs/nope")),
            ("get", API + "/kb/{kb_id}/status", c.get(f"{API}/kb/nope/status")),
            ("post", API + "/kb/{kb_id}/jobs", c.post(f"{API}/kb/waf/jobs", json={"sources": [str(tmp_path)]})),
            ("post", API + "/kb/{kb_id}/jobs", c.post(f"{API}/kb/waf/jobs", json={"nope": 1})),
            (
                "post",
                API + "/kb/{kb_id}/jobs",
                c.post(f"{API}/kb/waf/jobs", content=b"x" * 70000, headers={"Content-Type": "application/json"}),
            ),
            ("get", API + "/jobs", httpx.get(f"{s.url}{API}/jobs")),
            ("post", API + "/jobs/{job_id}/pause", c.post(f"{API}/jobs/nope/pause")),
            ("get", API + "/kb/{kb_id}/search", c.get(f"{API}/kb/waf/search", params={"q": " "})),
        ]
        for method, path, r in answers:
            assert str(r.status_code) in spec["paths"][path][method]["responses"], (path, r.status_code)
            jsonschema.validate(r.json(), schema)


def test_docs_load_offline_from_this_server_only(serve):
    s = serve(token="t")
    with httpx.Client(base_url=s.url, headers={"Authorization": "Bearer t"}, timeout=60) as c:
        page = c.get("/docs")
        assert page.status_code == 200 and "swagger" in page.text.lower()
        assert c.get("/redoc").status_code == 404  # ReDoc would load from a CDN
        named = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", page.text)
        assert named and not [u for u in named if "//" in u], named  # no other host, no scheme-relative URL
        assert not re.search(r"https?://", page.text), "the page names another host"
        assert re.search(r'"validatorUrl":\s*null', page.text), "Swagger UI would send the spec to validator.swagger.io"
        for url in named:
            r = c.get(url)
            assert r.status_code == 200 and r.content, url
            if url.endswith(".css"):  # what a stylesheet loads (fonts, images) comes from here too
                loads = re.findall(r"url\(\s*['\"]?([^'\")]+)", r.text)
                assert not [u for u in loads if re.match(r"(?:[a-z]+:)?//", u)], url  # data: URIs are inline
        assert httpx.get(f"{s.url}/docs").status_code == 401


# ---- the command ----------------------------------------------------------------------------------
@pytest.fixture
def command(tmp_path, corpus):
    started: list[ProcessServer] = []

    def make(*args: str, **env: str) -> ProcessServer:
        s = ProcessServer(tmp_path / f"home{len(started)}", "--allow-root", str(corpus), *args, env=env)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


def test_one_process_answers_every_request_mixed_on_one_connection(command, corpus):
    s = command("--token", "t")
    auth = "Authorization: Bearer t"
    with httpx.Client(base_url=s.url, headers={"Authorization": "Bearer t"}, timeout=60) as c:
        job_id = start_job(c, [corpus])
        wait_status(c, job_id, {"completed"})
        final = c.get(f"{API}/jobs/{job_id}").json()["status"]
    import psutil

    assert not psutil.Process(s.proc.pid).children(recursive=True), "one process"
    poll = request(f"{API}/kb/waf/status", auth)
    with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
        read = _Responses(sock).next
        for _ in range(3):
            sock.sendall(poll)
            status, headers, body = read()
            assert status == 200 and headers["content-type"] == "application/json" and json.loads(body) == final
        sock.sendall(poll[:30])  # a poll in two pieces
        time.sleep(0.2)
        sock.sendall(poll[30:])
        assert read()[0] == 200
        sock.sendall(request(f"{API}/jobs/{job_id}/pause", auth, "Content-Length: 0", method="POST"))
        status, _, body = read()
        assert status == 409 and json.loads(body)["error"] == "wrong_state"
        sock.sendall(poll + poll)  # pipelined, in order
        assert [read()[0], read()[0]] == [200, 200]
        sock.sendall(request(f"{API}/kb/waf/status"))  # no token
        status, headers, body = read()
        assert status == 401 and json.loads(body)["error"] == "unauthorized" and headers["www-authenticate"] == "Bearer"
        sock.sendall(request(f"{API}/kb/nope/status", auth))
        status, _, body = read()
        assert status == 404 and json.loads(body)["error"] == "not_found"
    with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
        sock.sendall(request(f"{API}/kb/nope/jobs", auth, "Content-Length: 70000", method="POST"))
        status, _, body = _Responses(sock).next()
        assert status == 413 and json.loads(body)["error"] == "too_large"
    s.stop()  # the start line: its address, the token on, no web UI
    start = [ln for ln in s.stderr.splitlines() if "kbingest serve: " in ln]
    assert len(start) == 1 and f"{s.url} (home" in start[0] and "token on" in start[0], s.stderr
    assert "web UI: none" in start[0], start


def test_start_and_stop_lines_and_idle_connections_are_closed(command, corpus):
    s = command("--rate-limit", "0", KBINGEST_FAKE_DELAY="0.05")
    with httpx.Client(base_url=s.url, timeout=60) as c:
        job_id = start_job(c, [corpus])
        wait_running_with_progress(c, job_id)
    with socket.create_connection(("127.0.0.1", s.port), timeout=30) as idle:
        idle.sendall(request(f"{API}/kb/waf/status"))
        assert _Responses(idle).next()[0] == 200
        idle.settimeout(20)
        began = time.monotonic()
        assert idle.recv(1) == b"", "an idle connection is closed"
        assert time.monotonic() - began < 15
    s.proc.send_signal(signal.SIGTERM)
    s.stop()
    assert s.proc.returncode == 0
    lines = [ln for ln in s.stderr.splitlines() if ln.strip()]
    start = [ln for ln in lines if "kbingest serve: http://127.0.0.1:" in ln]
    assert len(start) == 1 and f"{s.url} (home" in start[0] and "token off" in start[0], lines
    assert f"allowed roots: {corpus.resolve()}," in start[0] and "web UI: none" in start[0], lines
    stop = [ln for ln in lines if "kbingest serve stopped" in ln]
    assert len(stop) == 1 and f"paused {job_id}" in stop[0], lines
    assert not [ln for ln in lines if "exited with" in ln or "Traceback" in ln], lines


def test_sigkill_leaves_the_port_free(command):
    s = command()
    s.kill()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", s.port))


def test_no_status_front_is_accepted_and_changes_nothing(command, corpus):
    s = command("--no-status-front")
    with httpx.Client(base_url=s.url, timeout=60) as c:
        job_id = start_job(c, [corpus])
        wait_status(c, job_id, {"completed"})
        assert c.get(f"{API}/kb/waf/status").json() == c.get(f"{API}/jobs/{job_id}").json()["status"]
        assert c.get("/healthz").json()["status_front"] is None


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "kbingest", "--home", str(tmp_path / "h"), "serve", "--port", str(port)],
            cwd=str(REPO),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 2, r.stderr
    assert f"cannot serve on 127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr
