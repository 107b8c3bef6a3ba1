"""`kbingest serve --web`: the dashboard in a browser, at /ui/ on the server's own host and port.

Each browser session is one process, `kbingest --server http://127.0.0.1:PORT` (the remote dashboard
of app/remote.py, against this server's API, never the home directly; the token, if any, passed in
its environment), run under Textual's web driver and joined to the page by a websocket. The page is
xterm.js with textual-serve's client (textual.js, its CSS and fonts, served from the installed
`textual-serve` package, so it works offline and names no other host). The protocol between this
module and the process is Textual's web driver's, the one textual-serve's AppService speaks: packets
b"D" (terminal bytes) and b"M" (JSON meta), each a type byte and a 4-byte big-endian length. This
module does not use AppService itself: it runs its command through a shell and never ends the process
it started (its `stop` asks the app to quit and waits for it forever), and a session here must end its
process when the socket closes, whatever the app does.

Security, as the API's (docs/serve.md, "The dashboard in a browser"): with a token, the page and its
websocket need it, either as `Authorization: Bearer` or as the cookie a login form sets (HttpOnly,
SameSite=Strict, a keyed hash of the token, never the token itself; the token never in a URL); the
Host rule of the API applies to the page and to the websocket, and the websocket's Origin must be this
server; at most `sessions` sessions at once (503 beyond), a session with no input for `idle` seconds is
closed, and a session's process is ended when its socket closes.
"""

import asyncio
import hashlib
import hmac
import html
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

from kbingest.app.http_guard import ENV_TOKEN, host_allowed, host_name

log = logging.getLogger("kbingest.web")

PREFIX = "/ui"
OPEN = frozenset({PREFIX, PREFIX + "/", PREFIX + "/login"})  # answered without the token (the login form)
COOKIE = "kbingest_ui"
SESSIONS = 4  # --web-sessions: browser sessions at once
IDLE_S = 900.0  # --web-idle: a session without input for this long is closed
REFRESH_S = 2.0  # --web-refresh: how often a browser session's dashboard polls and redraws (the terminal's: 0.5)
REFRESH_RANGE = (0.5, 60.0)  # --web-refresh's bounds, seconds (checked here; the dashboard ignores others)
REFRESH_ENV = "KBINGEST_DASHBOARD_REFRESH"  # how a session's process is told (app/dashboard.py reads it)
END_GRACE_S = 3.0  # a session's process is asked to quit, then terminated, then killed, this long apart
MAX_PRELUDE_LINES = 20
# what a page may load: only this server (textual.js injects its styles; no font or script elsewhere)
CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "font-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def statics() -> Path:
    """textual-serve's static files (textual.js, xterm.css, its fonts): `kbingest[web]` installs it."""
    try:
        import textual_serve
    except ImportError:
        from kbingest.pipeline.service import InvalidInput

        raise InvalidInput(
            "--web needs textual-serve, in the extra `kbingest[web]`: pip install 'kbingest[web]' "
            "(make run installs it)"
        ) from None
    return Path(textual_serve.__file__).parent / "static"


def refresh_allowed(seconds: float) -> bool:
    low, high = REFRESH_RANGE
    return low <= seconds <= high


def check(sessions: int, idle: float, refresh: float = REFRESH_S) -> None:
    """--web's options, and textual-serve installed: else one line, before the server starts."""
    from kbingest.pipeline.service import InvalidInput

    if not 1 <= sessions <= 64:
        raise InvalidInput("--web-sessions: between 1 and 64 browser sessions at once")
    if not 1 <= idle <= 86400:
        raise InvalidInput("--web-idle: between 1 and 86400 seconds")
    if not refresh_allowed(refresh):
        low, high = REFRESH_RANGE
        raise InvalidInput(f"--web-refresh: between {low:g} and {high:g} seconds")
    statics()


def cookie_value(token: str) -> str:
    """What the login cookie holds: a keyed hash of the token, so that the cookie is not the token."""
    return hmac.new(token.encode(), b"kbingest web ui session", hashlib.sha256).hexdigest()


def cookie_of(headers: dict) -> str:
    """The login cookie's value in a request's headers (bytes keys, as ASGI gives them), or ""."""
    for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return ""


def web_authorized(token: Optional[bytes], headers: dict) -> bool:
    """A /ui/ request or websocket with the token: the login cookie, or `Authorization: Bearer`."""
    if token is None:
        return True
    auth = headers.get(b"authorization", b"")
    if auth[:7].lower() == b"bearer " and hmac.compare_digest(auth[7:], token):
        return True
    return hmac.compare_digest(cookie_of(headers).encode(), cookie_value(token.decode()).encode())


def same_origin(headers: dict) -> bool:
    """The websocket's Origin is this server (its scheme-less host:port is the request's Host)."""
    origin = headers.get(b"origin", b"").decode("latin-1")
    host = headers.get(b"host", b"").decode("latin-1").strip().lower()
    if not origin or not host:
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host


def own_url(bound: str, port: int) -> str:
    """The URL a session's process reaches this server at: the loopback when the server listens on
    every address, else the address it is bound to."""
    if bound in ("0.0.0.0", ""):
        bound = "127.0.0.1"
    elif bound in ("::", "[::]"):
        bound = "::1"
    name = host_name(bound) or bound
    return f"http://{name}:{port}"


@dataclass
class WebConfig:
    url: str  # the server's API, for each session's `kbingest --server URL`
    token: Optional[str] = None
    hosts: Optional[frozenset[str]] = None  # the Host rule (http_guard.host_rule)
    sessions: int = SESSIONS
    idle: float = IDLE_S
    refresh: float = REFRESH_S


class Sessions:
    """The sessions now open (their processes), at most `limit` at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.opening = 0

    def take(self) -> bool:
        if len(self.procs) + self.opening >= self.limit:
            return False
        self.opening += 1
        return True

    def end_all(self) -> None:
        """The server stops: every session's process ends now (each is asked again by its socket)."""
        for proc in list(self.procs.values()):
            if proc.returncode is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass


def packet(kind: bytes, payload: bytes) -> bytes:
    """One packet of Textual's web driver protocol: type, 4-byte big-endian length, payload."""
    return kind + len(payload).to_bytes(4, "big") + payload


def meta(data: dict) -> bytes:
    return packet(b"M", json.dumps(data).encode())


def _page(title: str) -> str:
    t = html.escape(title)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{t}</title>
<link rel="stylesheet" href="{PREFIX}/static/css/xterm.css">
<style>
@font-face {{ font-family: "Roboto Mono"; font-style: normal;
  src: url("{PREFIX}/static/fonts/RobotoMono-VariableFont_wght.ttf") format("truetype"); }}
@font-face {{ font-family: "Roboto Mono"; font-style: italic;
  src: url("{PREFIX}/static/fonts/RobotoMono-Italic-VariableFont_wght.ttf") format("truetype"); }}
html, body {{ margin: 0; height: 100%; background: #0c181f; color: #eee; font-family: "Roboto Mono", monospace; }}
#terminal {{ position: absolute; inset: 0; }}
.ended {{ display: none; position: absolute; inset: 0; z-index: 10; align-items: center;
  justify-content: center; flex-direction: column; background: rgba(12, 24, 31, .9); }}
body.-closed .ended {{ display: flex; }}
button {{ padding: 12px 28px; background: #5e0ba7; color: #fff; border: none; font: inherit; cursor: pointer; }}
</style>
<script src="{PREFIX}/static/js/textual.js"></script>
</head>
<body>
<div class="ended"><p>Session ended (closed, idle, or the server stopped).</p>
<button type="button" onclick="location.reload()">Open again</button></div>
<div id="terminal" class="textual-terminal" data-font-size="16"></div>
<script>
document.getElementById("terminal").dataset.sessionWebsocketUrl =
  (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "{PREFIX}/ws";
</script>
</body>
</html>
"""


def _login(message: str = "") -> str:
    note = f'<p class="error">{html.escape(message)}</p>' if message else ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>kbingest: sign in</title>
<style>
body {{ background: #0c181f; color: #eee; font-family: monospace; display: flex; height: 90vh;
  align-items: center; justify-content: center; }}
form {{ background: #12232d; padding: 32px; }}
input, button {{ font: inherit; padding: 8px; margin-top: 8px; }}
.error {{ color: #f88; }}
</style>
</head>
<body>
<form method="post" action="{PREFIX}/login">
<p>This kbingest server needs its token.</p>{note}
<label>Token <input type="password" name="token" autocomplete="current-password" autofocus></label>
<button type="submit">Open the dashboard</button>
</form>
</body>
</html>
"""


def mount(app: Any, cfg: WebConfig) -> Sessions:
    """The routes of the dashboard in a browser, on `app` (the server's FastAPI), under /ui/."""
    from fastapi import Request, WebSocket
    from fastapi.responses import HTMLResponse, RedirectResponse, Response
    from fastapi.staticfiles import StaticFiles

    token = cfg.token.encode() if cfg.token else None
    sessions = Sessions(cfg.sessions)
    headers = {"content-security-policy": CSP, "x-frame-options": "DENY", "cache-control": "no-store"}

    app.mount(PREFIX + "/static", StaticFiles(directory=statics()), name="ui-static")

    @app.get(PREFIX, include_in_schema=False)
    async def ui_root() -> Response:
        return RedirectResponse(PREFIX + "/", status_code=308)

    @app.get(PREFIX + "/", include_in_schema=False)
    async def ui_page(request: Request) -> Response:
        if not web_authorized(token, dict(request.scope["headers"])):
            return HTMLResponse(_login(), status_code=401, headers=headers)
        return HTMLResponse(_page("kbingest"), headers=headers)

    @app.post(PREFIX + "/login", include_in_schema=False)
    async def ui_login(request: Request) -> Response:
        given = (parse_qs((await request.body()).decode("utf-8", "replace")).get("token") or [""])[0]
        if token is None:
            return RedirectResponse(PREFIX + "/", status_code=303)
        if not hmac.compare_digest(given.encode(), token):
            return HTMLResponse(_login("That is not the token of this server."), status_code=401, headers=headers)
        r = RedirectResponse(PREFIX + "/", status_code=303)
        r.set_cookie(COOKIE, cookie_value(cfg.token or ""), httponly=True, samesite="strict", path=PREFIX)
        return r

    @app.websocket(PREFIX + "/ws")
    async def ui_socket(ws: WebSocket) -> None:
        h = dict(ws.scope["headers"])
        refused = (
            (403, "wrong_host", "not addressed to this server by a name it answers")
            if not host_allowed(cfg.hosts, h)
            else (403, "forbidden", "the websocket's Origin is not this server")
            if not same_origin(h)
            else (401, "unauthorized", "this server needs its token: open /ui/ and sign in")
            if not web_authorized(token, h)
            else None
        )
        if refused is None and not sessions.take():
            refused = (503, "busy", f"{sessions.limit} browser sessions are open (--web-sessions): close one")
        if refused is not None:
            status, kind, message = refused
            from fastapi.responses import JSONResponse

            await ws.send_denial_response(JSONResponse({"error": kind, "message": message}, status_code=status))
            return
        await _session(ws, cfg, sessions)

    return sessions


def _size(query: dict, name: str, default: int) -> int:
    try:
        return max(10, min(1000, int((query.get(name) or [str(default)])[0])))
    except ValueError:
        return default


async def _session(ws: Any, cfg: WebConfig, sessions: Sessions) -> None:
    """One browser session: its process, the bytes both ways, and its end (the process's too)."""
    from starlette.websockets import WebSocketDisconnect

    query = parse_qs(ws.scope.get("query_string", b"").decode("latin-1"))
    width, height = _size(query, "width", 80), _size(query, "height", 24)
    env = dict(os.environ)
    env.pop("KBINGEST_SERVER", None)
    env.pop(ENV_TOKEN, None)
    if cfg.token:
        env[ENV_TOKEN] = cfg.token  # never on the command line (ps) nor in a URL
    env.update(
        TEXTUAL_DRIVER="textual.drivers.web_driver:WebDriver",
        TEXTUAL_FPS="30",
        **{REFRESH_ENV: str(float(cfg.refresh))},
        TEXTUAL_COLOR_SYSTEM="truecolor",
        TERM_PROGRAM="textual",
        COLUMNS=str(width),
        ROWS=str(height),
    )
    proc: Optional[asyncio.subprocess.Process] = None
    try:
        await ws.accept()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kbingest",
            "--server",
            cfg.url,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group: ended with it, not by a terminal's Ctrl-C
        )
    finally:
        sessions.opening -= 1
    sessions.procs[proc.pid] = proc
    log.info("web session %d opened (%d open)", proc.pid, len(sessions.procs))
    stderr = bytearray()
    ended = "closed"

    async def from_app() -> None:
        nonlocal ended
        assert proc is not None and proc.stdout is not None
        out = proc.stdout
        for _ in range(MAX_PRELUDE_LINES):  # the web driver's prelude line
            line = await out.readline()
            if not line or line == b"__GANGLION__\n":
                break
        while True:
            kind = await out.readexactly(1)
            size = int.from_bytes(await out.readexactly(4), "big")
            payload = await out.readexactly(size)
            if kind == b"D":
                await ws.send_bytes(payload)
            elif kind == b"M":
                data = json.loads(payload)
                if data.get("type") == "exit":
                    ended = "the dashboard quit"
                    return
                if data.get("type") == "open_url":
                    await ws.send_text(json.dumps(["open_url", {"url": data["url"], "new_tab": data["new_tab"]}]))
            # b"P" (a file delivered to the browser): the dashboard delivers none

    async def from_browser() -> None:
        nonlocal ended
        assert proc is not None and proc.stdin is not None
        stdin = proc.stdin
        while True:
            try:
                message = await asyncio.wait_for(ws.receive_text(), timeout=cfg.idle)
            except asyncio.TimeoutError:
                ended = f"idle for {cfg.idle:g} s"
                return
            try:
                envelope = json.loads(message)
                kind, data = envelope[0], (envelope[1] if len(envelope) > 1 else None)
            except (ValueError, TypeError, IndexError, KeyError):
                continue
            if kind == "stdin" and isinstance(data, str):
                stdin.write(packet(b"D", data.encode("utf-8")))
            elif kind == "resize" and isinstance(data, dict):
                stdin.write(meta({"type": "resize", "width": _size({"w": [data.get("width")]}, "w", 80),
                                  "height": _size({"h": [data.get("height")]}, "h", 24)}))  # fmt: skip
            elif kind == "ping":
                await ws.send_text(json.dumps(["pong", data]))
                continue
            elif kind in ("focus", "blur"):
                stdin.write(meta({"type": kind}))
            await stdin.drain()

    async def errors() -> None:
        assert proc is not None and proc.stderr is not None
        while chunk := await proc.stderr.read(4096):
            stderr.extend(chunk)
            del stderr[:-4096]

    async def app_side() -> None:
        nonlocal ended
        try:
            await from_app()
        except asyncio.IncompleteReadError:  # the process ended without its exit packet
            ended = "the dashboard's process ended"

    tasks = [asyncio.ensure_future(c) for c in (app_side(), from_browser())]
    drain = asyncio.ensure_future(errors())
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        if any(isinstance(r, WebSocketDisconnect) for r in results):
            ended = "closed by the browser"
        code = await asyncio.shield(_end(proc))
        drain.cancel()
        sessions.procs.pop(proc.pid, None)
        try:
            await ws.close(code=1000, reason=ended[:120])
        except Exception:  # already closed by the browser
            pass
        last = bytes(stderr).decode("utf-8", "replace").strip().splitlines()[-1:] if code else []
        log.info("web session %d ended: %s (exit %s)%s", proc.pid, ended, code, f": {last[0][:300]}" if last else "")


async def _end(proc: asyncio.subprocess.Process) -> Optional[int]:
    """A session's process ends: asked to quit (the app quits as on `q`), then SIGTERM, then SIGKILL."""
    if proc.returncode is None and proc.stdin is not None:
        try:
            proc.stdin.write(meta({"type": "quit"}))
            await proc.stdin.drain()
            proc.stdin.close()
        except (ConnectionError, RuntimeError):
            pass
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None and proc.returncode is None:
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            return await asyncio.wait_for(proc.wait(), timeout=END_GRACE_S)
        except asyncio.TimeoutError:
            continue
    return proc.returncode
