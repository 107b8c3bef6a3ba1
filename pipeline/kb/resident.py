"""A resident process of a home answers searches that would otherwise start cold: it has LanceDB
imported and the model loaded, so `kbingest search` asks it first.

Resident processes are `kbingest serve` (its HTTP API) and, while they run, an `ingest --watch` or a
dashboard (`answering_searches`: a loopback responder of the same search endpoint, standard library
only, that wants a secret written in the announcement). A resident process announces itself in
HOME/serve.json (its URL, pid, whether it wants a token or the secret), private to the home's
owner; a search reads that file, checks the process lives, asks over HTTP on loopback with a short
timeout, and on any failure searches cold as before. Only the standard library is used here, so
the cold path pays nothing for it.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Iterator, Optional

from kbingest.pipeline.errors import KbError
from kbingest.pipeline.paths import Home, open_private

ANNOUNCE = "serve.json"
TIMEOUT_S = 20.0  # a first search makes the server open the table and load the model: still faster than cold
ENV_TOKEN = "KBINGEST_TOKEN"


def _file(home: Home):
    return home.root / ANNOUNCE


@contextlib.contextmanager
def announced(home: Home, url: str, token_required: bool, secret: Optional[str] = None) -> Iterator[None]:
    """HOME/serve.json while the block runs (the server's life); removed at the end only while it is
    still this process's announcement."""
    path = _file(home)
    fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "w") as f:
        json.dump(
            {"url": url, "pid": os.getpid(), "token": token_required, **({"secret": secret} if secret else {})}, f
        )
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            fd = open_private(path, os.O_RDONLY)
            with os.fdopen(fd) as f:
                mine = int(json.loads(f.read(4096))["pid"]) == os.getpid()
            if mine:
                os.unlink(path)


def find(home: Home) -> Optional[dict[str, Any]]:
    """The resident server of this home, if one announced itself and its process lives."""
    try:
        fd = open_private(_file(home), os.O_RDONLY)
    except (FileNotFoundError, KbError, OSError):
        return None
    try:
        with os.fdopen(fd) as f:
            info = json.loads(f.read(4096))
        pid = int(info["pid"])
        os.kill(pid, 0)
        url = str(info["url"])
    except (ValueError, KeyError, TypeError, OSError):
        return None
    host = urllib.parse.urlsplit(url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        return None  # only ever a server on this machine's loopback
    secret = info.get("secret")
    return {
        "url": url.rstrip("/"),
        "token": bool(info.get("token")),
        "secret": secret if isinstance(secret, str) else None,
    }


def search(info: dict[str, Any], kb: str, query: str, k: int, mode: str) -> Optional[list[dict[str, Any]]]:
    """The server's hits, or None when it cannot answer (the caller searches cold). An answer that
    is an error of the search itself (no such knowledge base...) is raised as that typed error."""
    from kbingest.pipeline import errors

    headers = {"Accept": "application/json"}
    if info.get("secret"):
        headers["Authorization"] = f"Bearer {info['secret']}"
    elif info["token"]:
        token = os.environ.get(ENV_TOKEN)
        if not token:
            return None
        headers["Authorization"] = f"Bearer {token}"
    q = urllib.parse.urlencode({"q": query, "k": k, "mode": mode})
    req = urllib.request.Request(
        f"{info['url']}/api/ingestion/kb/{urllib.parse.quote(kb, safe='')}/search?{q}", headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            body = json.loads(e.read(65536))
        except ValueError:
            return None
        cls = {"not_found": errors.NotFound, "invalid_input": errors.InvalidInput}.get(body.get("error"))
        if cls is None:
            return None
        raise cls(str(body.get("message", ""))) from None
    except (OSError, ValueError):
        return None


# ---- the responder of a watch job or a dashboard ------------------------------------------------
SEARCH_PATH = re.compile(r"^/api/ingestion/kb/([^/?#]+)/search$")


@contextlib.contextmanager
def answering_searches(service: Any) -> Iterator[Optional[str]]:
    """While the block runs, this process answers `kbingest search` for its home: a loopback HTTP
    responder of the server's search endpoint, in daemon threads, announced with a fresh secret.
    Yields its URL, or None when another resident process already answers for the home."""
    if find(service.home) is not None:
        yield None
        return
    import secrets
    from http.server import ThreadingHTTPServer

    secret = secrets.token_urlsafe(32)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(service, secret))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="kbingest-search-responder", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        with announced(service.home, url, token_required=False, secret=secret):
            yield url
    finally:
        httpd.shutdown()
        httpd.server_close()


def _handler(service: Any, secret: str):
    from http.server import BaseHTTPRequestHandler

    class SearchResponder(BaseHTTPRequestHandler):
        timeout = 10  # a client that stalls mid-request loses its thread after this, never holds one
        server_version = "kbingest"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the terminal is the dashboard's
            pass

        def _answer(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            from kbingest.pipeline import errors

            given = self.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {secret}".encode()):
                return self._answer(401, {"error": "unauthorized", "message": "this responder wants its secret"})
            url = urllib.parse.urlsplit(self.path)
            m = SEARCH_PATH.match(url.path)
            if m is None:
                return self._answer(404, {"error": "not_found", "message": "only searches are answered here"})
            q = urllib.parse.parse_qs(url.query)
            try:
                k = int(q.get("k", ["5"])[0])
                hits = service.search_here(
                    urllib.parse.unquote(m.group(1)), q.get("q", [""])[0], k, mode=q.get("mode", ["hybrid"])[0]
                )
            except ValueError:
                return self._answer(422, {"error": "invalid_input", "message": "k must be a whole number"})
            except errors.KbError as e:
                return self._answer(e.http_status, {"error": e.kind, "message": e.message})
            except Exception as e:  # the caller searches cold instead: nothing to lose
                return self._answer(500, {"error": "error", "message": str(e)[:500]})
            self._answer(200, [h.__dict__ for h in hits])

    return SearchResponder
