"""`kbingest serve --web` (app/web.py): the dashboard in a browser at /ui/. Its guards over a real
uvicorn on 127.0.0.1 (the login form and its cookie, the Host rule, the websocket's Origin, the
session limit, idle sessions closed, each session's process ended with its socket), and the whole of
it in a real headless Chromium (Debian's package, driven by Playwright): the page draws the
dashboard, `p` pressed in the page pauses the server's job."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import REPO, copy_pages
from live_server import ProcessServer, ThreadServer
from test_crash_resume import waf_pages

pytest.importorskip("textual_serve", reason="the extra kbingest[web] is not installed")
from kbingest.app.dashboard import POLL_S, STORE_POLL_S, poll_periods  # noqa: E402
from kbingest.app.web import REFRESH_ENV  # noqa: E402

websockets = pytest.importorskip("websockets")

pytestmark = pytest.mark.timeout(240)
API = "/api/ingestion"
TOKEN = "s3cret-token-of-this-server"
CHROMIUM = "/usr/bin/chromium"
DOCS_IMG = REPO / "docs" / "img"


def sessions_of(pid: int) -> list[psutil.Process]:
    """The dashboard processes a server (process `pid`) runs for its browser sessions."""
    out = []
    for p in psutil.Process(pid).children(recursive=True):
        try:
            if "--server" in p.cmdline():
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_for(what: str, check, timeout: float = 60.0, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(step)


def ws_url(server) -> str:
    return server.url.replace("http://", "ws://") + "/ui/ws?width=100&height=30"


async def _open(server, *, origin=True, cookie=None, host=None, headers=None):
    h = dict(headers or {})
    if origin:
        h["Origin"] = server.url
    if cookie:
        h["Cookie"] = f"kbingest_ui={cookie}"
    if host:
        h["Host"] = host
    return await websockets.connect(ws_url(server), additional_headers=h, open_timeout=30, close_timeout=2)


async def _refused(server, **kw) -> int:
    with pytest.raises(websockets.exceptions.InvalidStatus) as e:
        await _open(server, **kw)
    return e.value.response.status_code


def _cookie(server) -> str:
    r = httpx.post(server.url + "/ui/login", data={"token": TOKEN}, timeout=10)
    assert r.status_code == 303, r.text
    return r.cookies["kbingest_ui"]


# ---- the page and the login --------------------------------------------------------------------
def test_page_needs_the_token_and_the_login_form_sets_an_httponly_strict_cookie(tmp_path):
    server = ThreadServer(tmp_path / "home", token=TOKEN, web=True)
    try:
        r = httpx.get(server.url + "/ui/", timeout=10)
        assert r.status_code == 401 and '<form method="post" action="/ui/login">' in r.text
        assert TOKEN not in r.text
        assert httpx.get(server.url + "/ui/static/js/textual.js", timeout=10).status_code == 401
        bad = httpx.post(server.url + "/ui/login", data={"token": "wrong"}, timeout=10)
        assert bad.status_code == 401 and "not the token of this server" in bad.text and "set-cookie" not in bad.headers

        ok = httpx.post(server.url + "/ui/login", data={"token": TOKEN}, timeout=10)
        assert ok.status_code == 303 and ok.headers["location"] == "/ui/"
        set_cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in set_cookie and "SameSite=strict" in set_cookie and "Path=/ui" in set_cookie
        cookie = ok.cookies["kbingest_ui"]
        assert cookie and TOKEN not in cookie  # a keyed hash of the token, not the token

        page = httpx.get(server.url + "/ui/", cookies={"kbingest_ui": cookie}, timeout=10)
        assert page.status_code == 200 and "/ui/static/js/textual.js" in page.text
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "connect-src 'self'" in csp
        # offline: the page names no other host (textual-serve's own template loads a font from one)
        assert not re.search(r"(https?:)?//[a-z]", page.text.replace('"wss://"', "").replace('"ws://"', ""))
        for asset in ("js/textual.js", "css/xterm.css", "fonts/RobotoMono-VariableFont_wght.ttf"):
            got = httpx.get(f"{server.url}/ui/static/{asset}", cookies={"kbingest_ui": cookie}, timeout=10)
            assert got.status_code == 200 and len(got.content) > 1000, asset
        bearer = httpx.get(server.url + "/ui/", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert bearer.status_code == 200
        # the cookie opens the page only, not the API
        assert httpx.get(server.url + API + "/jobs", cookies={"kbingest_ui": cookie}, timeout=10).status_code == 401
    finally:
        server.stop()


def test_without_web_there_is_no_page(tmp_path):
    server = ThreadServer(tmp_path / "home", token=TOKEN)
    try:
        assert httpx.get(server.url + "/ui/", timeout=10).status_code == 401  # the API's token rule
        ok = httpx.get(server.url + "/ui/", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert ok.status_code == 404
    finally:
        server.stop()


# ---- the websocket -----------------------------------------------------------------------------
def test_websocket_needs_token_origin_and_host_and_sessions_are_limited_and_ended(tmp_path):
    server = ThreadServer(tmp_path / "home", token=TOKEN, web=True, web_sessions=2)
    me = os.getpid()

    async def scenario() -> None:
        cookie = _cookie(server)
        assert await _refused(server) == 401  # no token
        assert await _refused(server, cookie="0" * 64) == 401
        assert await _refused(server, cookie=cookie, origin=False) == 403  # no Origin
        assert await _refused(server, cookie=cookie, headers={"Origin": "http://evil.example"}, origin=False) == 403
        a = await _open(server, cookie=cookie)
        b = await _open(server, headers={"Authorization": f"Bearer {TOKEN}"})
        first = await asyncio.wait_for(a.recv(), 60)  # the dashboard's first frame
        assert isinstance(first, bytes)
        pids = await asyncio.to_thread(
            wait_for, "two session processes", lambda: sessions_of(me) if len(sessions_of(me)) == 2 else None
        )
        assert await _refused(server, cookie=cookie) == 503  # --web-sessions 2
        await a.close()
        # the socket closed: its process is gone
        await asyncio.to_thread(
            wait_for,
            "a session's process ended",
            lambda: len({p.pid for p in pids} - {p.pid for p in sessions_of(me)}) == 1,
        )
        ended = next(p for p in pids if p.pid not in {q.pid for q in sessions_of(me)})
        assert not ended.is_running() or ended.status() == psutil.STATUS_ZOMBIE
        c = await _open(server, cookie=cookie)  # a place again
        await c.close()
        await b.close()
        await asyncio.to_thread(wait_for, "every session's process ended", lambda: not sessions_of(me))

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_websocket_host_rule_without_a_token(tmp_path):
    server = ThreadServer(tmp_path / "home", web=True)

    async def scenario() -> None:
        port = server.port
        assert (
            await _refused(
                server, host=f"evil.example:{port}", headers={"Origin": f"http://evil.example:{port}"}, origin=False
            )
            == 403
        )
        ws = await _open(server)  # no token: the loopback, same origin
        await ws.close()

    try:
        r = httpx.get(server.url + "/ui/", headers={"Host": "evil.example"}, timeout=10)
        assert r.status_code == 421  # the API's Host rule applies to the page
        assert httpx.get(server.url + "/ui/", timeout=10).status_code == 200
        asyncio.run(scenario())
    finally:
        server.stop()


def test_idle_session_is_closed_and_its_process_ended(tmp_path):
    server = ThreadServer(tmp_path / "home", web=True, web_idle=2)
    me = os.getpid()

    async def scenario() -> None:
        ws = await _open(server)
        pid = (await asyncio.to_thread(wait_for, "a session process", lambda: sessions_of(me)))[0].pid
        started = time.monotonic()
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 60)  # frames until the server closes it
        assert time.monotonic() - started >= 1.5
        assert ws.close_reason.startswith("idle")
        await asyncio.to_thread(
            wait_for,
            "the idle session's process ended",
            lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
        )

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_browser_sessions_redraw_at_the_web_refresh_rate(tmp_path, monkeypatch):
    """Each redraw is CPU the job does not get (ten sessions at the terminal's 2 Hz cost a job a third
    of its speed): a session's dashboard polls and redraws every --web-refresh seconds."""
    server = ThreadServer(tmp_path / "home", web=True, web_refresh=3)
    me = os.getpid()

    async def scenario() -> str:
        ws = await _open(server)
        await asyncio.wait_for(ws.recv(), 60)  # drawn
        proc = (await asyncio.to_thread(wait_for, "a session process", lambda: sessions_of(me)))[0]
        env = proc.environ().get(REFRESH_ENV, "")
        await ws.close()
        return env

    try:
        told = asyncio.run(scenario())
    finally:
        server.stop()
    assert told == "3.0"
    monkeypatch.setenv(REFRESH_ENV, told)
    assert poll_periods() == (3.0, 6.0)  # what that process's dashboard polls at (the job store half as often)
    for bad in ("0.1", "61", "nan", "soon", ""):
        assert poll_periods({REFRESH_ENV: bad}) == (POLL_S, STORE_POLL_S)  # the terminal's rates
    assert (POLL_S, STORE_POLL_S) == (0.5, 1.0)


def test_server_stop_ends_every_session_process(tmp_path):
    server = ProcessServer(tmp_path / "home", "--web")

    async def scenario() -> list[int]:
        ws = await _open(server)
        await asyncio.wait_for(ws.recv(), 60)  # drawn
        pids = [p.pid for p in sessions_of(server.proc.pid)]
        assert len(pids) == 1
        assert psutil.Process(pids[0]).environ().get(REFRESH_ENV) == "2.0"  # --web-refresh's default
        await asyncio.to_thread(server.stop)  # SIGTERM, the socket still open
        return pids

    try:
        pids = asyncio.run(scenario())
    finally:
        server.stop()
    assert server.proc.returncode == 0, server.stderr
    assert f"web UI: {server.url}/ui/ " in server.stderr  # the start line says where the page is
    wait_for("the session's process ended with the server", lambda: not any(psutil.pid_exists(p) for p in pids))


def test_serve_web_refuses_bad_options_in_one_line(tmp_path):
    for args, words in (
        (["--web", "--host", "0.0.0.0"], "not a loopback address: give a token"),
        (["--web", "--web-sessions", "0"], "--web-sessions: between 1 and 64"),
        (["--web", "--web-idle", "0"], "--web-idle: between 1 and 86400"),
        (["--web", "--web-refresh", "0.1"], "--web-refresh: between 0.5 and 60"),
    ):
        r = subprocess.run(
            [sys.executable, "-m", "kbingest", "--home", str(tmp_path / "h"), "serve", "--port", "1", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=str(REPO),
        )
        assert r.returncode == 2 and words in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1


# ---- in a real browser -------------------------------------------------------------------------
CAPTURE = """
window.__frames = [];
const Native = window.WebSocket;
window.WebSocket = function (url, protocols) {
  const ws = protocols === undefined ? new Native(url) : new Native(url, protocols);
  ws.addEventListener("message", (e) => {
    if (typeof e.data !== "string") window.__frames.push(new TextDecoder().decode(new Uint8Array(e.data)));
  });
  return ws;
};
window.WebSocket.prototype = Native.prototype;
"""
ANSI = re.compile(r"\x1b\[[0-9;?<>=]*[ -/]*[@-~]|\x1b[PX^_].*?\x1b\\|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b.")


def screen_text(page) -> str:
    return ANSI.sub("", "".join(page.evaluate("window.__frames")))


@pytest.mark.xdist_group("browser")
def test_dashboard_in_chromium_draws_and_p_pauses_the_server_job(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (CI installs it: .ci/run)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the test extra) is not installed")
    corpus = copy_pages(tmp_path / "docs", waf_pages(40))
    server = ProcessServer(
        tmp_path / "home",
        "--web",
        "--allow-root",
        str(corpus),
        env={"KBINGEST_TOKEN": TOKEN, "KBINGEST_FAKE_DELAY": "0.2"},
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        r = httpx.post(
            f"{server.url}{API}/kb/docs/jobs", json={"sources": [str(corpus)], "embedder": "fake"}, headers=auth
        )
        assert r.status_code in (200, 201, 202), r.text
        job_id = r.json()["job_id"]

        def status() -> str:
            return httpx.get(f"{server.url}{API}/jobs/{job_id}", headers=auth, timeout=10).json()["status"]["status"]

        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                context = browser.new_context(viewport={"width": 1280, "height": 800})
                context.add_init_script(CAPTURE)
                page = context.new_page()
                page.goto(server.url + "/ui/")
                assert page.locator("input[name=token]").count() == 1  # the login form
                page.fill("input[name=token]", TOKEN)
                page.click("button[type=submit]")
                page.wait_for_url(server.url + "/ui/")
                page.wait_for_selector(".xterm-screen", timeout=60_000)
                wait_for(
                    "the dashboard drawn in the page (panes and footer)",
                    lambda: all(w in screen_text(page) for w in ("events", "errors", "pause", job_id[:8])),
                    timeout=90,
                    step=0.3,
                )
                assert wait_for(
                    "the page shows the first bytes",
                    lambda: "-first-byte" in (page.get_attribute("body", "class") or ""),
                )
                wait_for("the job running", lambda: status() == "running", timeout=60)
                time.sleep(1.0)  # a frame or two after the first: what a person sees
                if os.environ.get("KBINGEST_SCREENSHOTS"):  # docs/dashboard.md's pictures, a page at each size
                    DOCS_IMG.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(DOCS_IMG / "web-1280x800.png"))
                    small = context.new_page()
                    small.set_viewport_size({"width": 900, "height": 600})
                    small.goto(server.url + "/ui/")
                    wait_for("the small page drawn", lambda: "quit" in screen_text(small), timeout=90, step=0.3)
                    time.sleep(2.0)
                    small.screenshot(path=str(DOCS_IMG / "web-900x600.png"))
                    small.close()
                    wait_for("one session again", lambda: len(sessions_of(server.proc.pid)) == 1)
                page.click(".xterm-screen")
                page.keyboard.press("p")
                wait_for("paused through the page's p", lambda: status() == "paused", timeout=90, step=0.3)
                assert len(sessions_of(server.proc.pid)) == 1
                page.close()
                wait_for("the session's process ended with its page", lambda: not sessions_of(server.proc.pid))
            finally:
                browser.close()
        assert status() == "paused"  # closing the page left the job as it was
    finally:
        server.stop()
    assert server.proc.returncode == 0, server.stderr
