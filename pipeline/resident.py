"""A resident process of a home (`kbingest serve`) answers searches that would otherwise start
cold: it has LanceDB imported and the model loaded, so `kbingest search` asks it first.

The server announces itself in HOME/serve.json (its URL, pid, whether it wants a token) while it
runs; a search reads that file, checks the process lives, asks over HTTP on loopback with a short
timeout, and on any failure searches cold as before. Only the standard library is used here, so
the cold path pays nothing for it.
"""
from __future__ import annotations

import contextlib
import json
import os
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
def announced(home: Home, url: str, token_required: bool) -> Iterator[None]:
    """HOME/serve.json while the block runs (the server's life)."""
    path = _file(home)
    fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "pid": os.getpid(), "token": token_required}, f)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
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
    return {"url": url.rstrip("/"), "token": bool(info.get("token"))}


def search(info: dict[str, Any], kb: str, query: str, k: int, mode: str) -> Optional[list[dict[str, Any]]]:
    """The server's hits, or None when it cannot answer (the caller searches cold). An answer that
    is an error of the search itself (no such knowledge base...) is raised as that typed error."""
    from kbingest.pipeline import errors

    headers = {"Accept": "application/json"}
    if info["token"]:
        token = os.environ.get(ENV_TOKEN)
        if not token:
            return None
        headers["Authorization"] = f"Bearer {token}"
    q = urllib.parse.urlencode({"q": query, "k": k, "mode": mode})
    req = urllib.request.Request(f"{info['url']}/api/ingestion/kb/{urllib.parse.quote(kb, safe='')}/search?{q}",
                                 headers=headers)
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
        raise cls(str(body.get("message", "")))
    except (OSError, ValueError):
        return None
