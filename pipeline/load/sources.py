"""Documents not on the local disk (issue 34): a SOURCE given as a URI, behind a registry by scheme.

- `s3://bucket/prefix/`: the objects listed under the prefix (boto3, the AWS_* environment as for --db).
  Each item's version is known from the listing alone (its ETag, or version id): an unchanged object
  is skipped without being downloaded.
- `http(s)://host/path/` (or a `.../sitemap.xml`): the pages crawled within the URL prefix (httpx),
  robots.txt honoured, a politeness delay, a concurrency limit, page, depth and size limits, redirects
  followed by hand and never out of the prefix, the canonical URL (fragment dropped) as identity.
  A page's ETag / Last-Modified are kept (`WebState`), so a re-run sends conditional requests and a
  304 is skipped without a body.

A source yields `RemoteItem`s (identity, the version if known without reading, a `read()`) and
`Problem`s; nothing here raises out of `items()`. Identification and extraction of the bytes is the
one of files (`loading.loaded_from_bytes`). Server-started jobs (`kbingest serve`) are bound by
`LoadLimits.allowed_urls`: only URIs under an --allow-url prefix, and never a loopback, link-local or
private address unless the prefix itself names such a host (docs/sources.md).
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional
from urllib.parse import urldefrag, urljoin, urlsplit

from kbingest.pipeline.load import formats
from kbingest.pipeline.load.formats.base import LoadError
from kbingest.pipeline.models import LoadLimits

SCHEMES = ("s3://", "http://", "https://")
WEB_CONCURRENCY = 4  # pages fetched at once
WEB_DELAY_S = 0.05  # politeness: at least this long between two requests' starts
WEB_MAX_PAGES = 1000  # pages per crawl (a job's max_files binds too)
WEB_MAX_DEPTH = 8  # links followed from the start page (a job's max_depth binds too)
WEB_TIMEOUT_S = 20.0
MAX_REDIRECTS = 5
USER_AGENT = "kbingest"


def is_uri(source: str) -> bool:
    """A SOURCE that names a document not on the local disk."""
    return isinstance(source, str) and source.lower().startswith(SCHEMES)


@dataclass
class RemoteItem:
    """A document of a remote source, found and not read (or, for the web, fetched already)."""

    uri: str  # its identity: the object's s3:// URI, the page's canonical URL
    root: str  # the SOURCE it was found under
    version: Optional[str]  # known without reading (an object's ETag): the unchanged-skip uses it
    size: Optional[int] = None
    read: Callable[[], tuple[bytes, Optional[str]]] = field(default=lambda: (b"", None), repr=False)
    not_modified: bool = False  # the server answered 304 to a conditional request: unchanged, no body
    validators: dict = field(default_factory=dict)  # ETag / Last-Modified of a page (WebState)
    by_uri: bool = False  # its bytes can be read from its URI alone (read_remote): a Ray worker reads it
    # a page fetched and read where it was fetched (a Ray worker: fetch_page): its text stays there,
    # `loaded` is the handle the worker that chunks it reads it by; the driver has its hash and format
    loaded: Any = field(default=None, repr=False)
    content_hash: str = ""
    fmt: str = ""
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Problem:
    path: str
    kind: str
    message: str


class SourceUnusable(ValueError):
    """A URI SOURCE that cannot be used at all (bad syntax, scheme unknown, not allowed)."""


# ------------------------------------------------------------------------------ the boundary


def _private_host(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host.lower() in ("localhost",) or host.lower().endswith(".localhost")
    return not ip.is_global


def _addresses(host: str, port: int) -> list[str]:
    try:
        return sorted({str(a[4][0]) for a in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)})
    except (OSError, UnicodeError):
        return []


def check_allowed(uri: str, limits: LoadLimits, resolve: bool = True) -> None:
    """Raise LoadError('not_allowed') when a job of `kbingest serve` may not read `uri`: outside every
    --allow-url prefix, or (http) its host resolves to a loopback, link-local or private address that
    the matching prefix does not name itself. The CLI (allowed_urls None) may read any URI."""
    allowed = limits.allowed_urls
    if allowed is None:
        return
    prefix = next((p for p in allowed if uri.startswith(p)), None)
    if prefix is None:
        raise LoadError("not_allowed", "not under an --allow-url prefix of the server running this job: not read")
    if not resolve or uri.startswith("s3://"):
        return
    parts = urlsplit(uri)
    if _private_host(urlsplit(prefix).hostname or ""):
        return  # the operator allowed this private host by name
    addrs = _addresses(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    bad = [a for a in addrs if not ipaddress.ip_address(a.split("%")[0]).is_global]
    if not addrs or bad:
        raise LoadError(
            "not_allowed",
            f"its host resolves to a loopback, link-local or private address "
            f"({bad[0] if bad else 'none'}): not fetched by a server job",
        )


# ------------------------------------------------------------------------------------ S3


_clients: dict[tuple, object] = {}
_clients_lock = threading.Lock()


def _s3_client():
    """An S3 client from the AWS_* environment (as for --db), one a process and endpoint. Its user agent
    names the process (`kbingest-pid/PID`): a server's log tells which process read what (a Ray driver
    reads no object: its workers do, bench/sources.py and tests/executors count it so)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise SourceUnusable("s3:// sources need boto3: pip install 'kbingest[s3]'") from None
    env = os.environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    key = (os.getpid(), tuple(sorted((k, v) for k, v in env.items() if k.startswith("AWS_"))))  # rotated: anew
    with _clients_lock:
        if key not in _clients:
            _clients[key] = boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name=region,
                config=Config(user_agent_extra=f"kbingest-pid/{os.getpid()}"),
            )
        return _clients[key]


def _get_object(client, bucket: str, key: str, limits: LoadLimits) -> bytes:
    """One object's bytes, within the size limit; raise LoadError."""
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        data = body.read(limits.max_file_bytes + 1)
    except Exception as e:
        if "NoSuchKey" in type(e).__name__ or "NoSuchKey" in str(e):
            raise LoadError("vanished", "the object was deleted before it could be read") from None
        raise LoadError("read_failed", f"cannot read the object: {_one_line(e)}") from None
    if len(data) > limits.max_file_bytes:
        raise LoadError("too_large", f"object is too large (limit {limits.max_file_bytes} bytes)")
    return data


def read_remote(uri: str, limits: LoadLimits) -> tuple[bytes, Optional[str]]:
    """A remote document's bytes from its URI alone, wherever this runs (a Ray worker: the driver
    planned it from the listing and never read it). s3:// only: a web page is read by the crawl,
    which needs its links. Raise LoadError (the document's error)."""
    check_allowed(uri, limits)
    if not uri.startswith("s3://"):
        raise LoadError("read_failed", "only s3:// documents are read from their URI alone: not read")
    try:
        client = _s3_client()
    except SourceUnusable as e:
        raise LoadError("read_failed", str(e)) from None
    bucket, key = split_s3(uri)
    return _get_object(client, bucket, key, limits), None


def split_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise SourceUnusable(f"no bucket in {uri!r}: expected s3://BUCKET/PREFIX")
    return bucket, prefix


class S3Source:
    def __init__(self, uri: str, limits: LoadLimits, state: "Optional[WebState]" = None) -> None:
        self.uri, self.limits = uri, limits
        self.bucket, self.prefix = split_s3(uri)
        self.downloads = 0  # objects read (the bench checks an unchanged re-run reads none)

    def items(self) -> Iterator[RemoteItem | Problem]:
        try:
            check_allowed(self.uri, self.limits)
            client = _s3_client()
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
            count = 0
            for page in pages:
                for o in page.get("Contents", []):
                    key, uri = o["Key"], f"s3://{self.bucket}/{o['Key']}"
                    if key.endswith("/") or formats.for_path(key) is None:
                        continue
                    if o.get("Size", 0) > self.limits.max_file_bytes:
                        yield Problem(
                            uri,
                            "too_large",
                            f"object is too large ({o['Size']} bytes, limit {self.limits.max_file_bytes}): not loaded",
                        )
                        continue
                    if count >= self.limits.max_files:
                        yield Problem(
                            uri,
                            "too_many_files",
                            f"more than {self.limits.max_files} documents found: stopped listing here",
                        )
                        return
                    count += 1
                    etag = str(o.get("ETag", "")).strip('"')
                    yield RemoteItem(
                        uri,
                        self.uri,
                        f"s3-etag:{etag}" if etag else None,
                        o.get("Size"),
                        read=self._reader(client, key),
                        by_uri=True,
                    )
        except LoadError as e:
            yield Problem(self.uri, e.kind, e.message)
        except SourceUnusable as e:
            yield Problem(self.uri, "source_unusable", str(e))
        except Exception as e:  # botocore's errors: one line, the source's error
            yield Problem(self.uri, "list_failed", f"cannot list this prefix: {_one_line(e)}")

    def _reader(self, client, key: str):
        def read() -> tuple[bytes, Optional[str]]:
            data = _get_object(client, self.bucket, key, self.limits)
            self.downloads += 1
            return data, None

        return read


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


# ------------------------------------------------------------------------------------ web


class WebState:
    """What a knowledge base remembers of the pages it crawled: url -> {etag, last_modified, version,
    links}, one JSON file per knowledge base in the home (HOME/sources/KB.json). A conditional request
    is sent only for a page whose stored version is the one the table holds (so a lost write re-reads)."""

    def __init__(self, path: Optional[str]) -> None:
        self.path = path
        self.pages: dict[str, dict] = {}
        self._lock = threading.Lock()
        if path and os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    self.pages = dict(json.load(f))
            except (OSError, ValueError):
                self.pages = {}

    def get(self, url: str) -> Optional[dict]:
        with self._lock:
            return self.pages.get(url)

    def put(self, url: str, entry: dict) -> None:
        with self._lock:
            self.pages[url] = entry

    def forget(self, url: str) -> None:
        with self._lock:
            self.pages.pop(url, None)

    def save(self) -> None:
        if not self.path:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        with self._lock, open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.pages, f)
        os.replace(tmp, self.path)


def canonical_url(url: str) -> str:
    """A page's identity: its absolute URL with the fragment dropped and scheme and host lowercased."""
    url = urldefrag(url)[0]
    p = urlsplit(url)
    netloc = p.netloc.lower()
    path = p.path or "/"
    return f"{p.scheme.lower()}://{netloc}{path}" + (f"?{p.query}" if p.query else "")


def _links(html: bytes, base: str) -> list[str]:
    """Absolute canonical URLs of a page's <a href> and <link rel=canonical>-less anchors."""
    from selectolax.lexbor import LexborHTMLParser as HTMLParser

    out = []
    tree = HTMLParser(html)
    for node in tree.css("a[href]"):
        href = (node.attributes.get("href") or "").strip()
        if href and not href.lower().startswith(("mailto:", "javascript:", "tel:", "data:")):
            out.append(canonical_url(urljoin(base, href)))
    return out


def _sitemap_urls(xml: bytes) -> list[str]:
    import re

    return [canonical_url(u.strip()) for u in re.findall(rb"<loc>\s*([^<]+?)\s*</loc>", xml) for u in [u.decode()]]


_HTML_TYPES = ("text/html", "application/xhtml+xml")
_REDIRECTS = (301, 302, 303, 307, 308)


@dataclass(frozen=True)
class Redirect:
    """fetch_page's answer to a redirect inside the prefix: the next hop, which the crawl starts."""

    url: str


class WebSource:
    def __init__(
        self,
        uri: str,
        limits: LoadLimits,
        state: Optional[WebState] = None,
        delay: float = WEB_DELAY_S,
        concurrency: int = WEB_CONCURRENCY,
        max_pages: int = WEB_MAX_PAGES,
    ) -> None:
        self.start = canonical_url(uri)
        self.sitemap = urlsplit(self.start).path.endswith(".xml")
        self.prefix = self.start.rsplit("/", 1)[0] + "/" if self.sitemap or not self.start.endswith("/") else self.start
        if self.sitemap:
            self.prefix = self.start.rsplit("/", 1)[0] + "/"
        self.uri, self.limits, self.state = uri, limits, state or WebState(None)
        self.delay, self.concurrency = delay, concurrency
        self.max_pages = min(max_pages, limits.max_files)
        self.max_depth = min(WEB_MAX_DEPTH, limits.max_depth)
        self._last = 0.0
        self._pace = threading.Lock()
        self.requests = 0
        # (url, headers, stored validators, root, prefix) -> (item, problem or redirect; links): a
        # page's request made and the page read by someone else (the Ray executor's workers:
        # fetch_page); None: here
        self.fetch_remote: Optional[Callable[..., tuple[Optional[RemoteItem | Problem | Redirect], list[str]]]] = None

    def inside(self, url: str) -> bool:
        return url.startswith(self.prefix) or url == self.prefix.rstrip("/")

    # -- fetching
    def _wait_turn(self) -> None:
        with self._pace:
            now = time.monotonic()
            wait = self._last + self.delay - now
            if wait > 0:
                time.sleep(wait)
            self._last = time.monotonic()

    def _get(self, client, url: str, headers: Optional[dict] = None):
        """GET with redirects followed by hand, each hop inside the prefix and allowed (get_page)."""

        def turn() -> None:
            self._wait_turn()
            self.requests += 1

        return get_page(client, url, headers, self.limits, self.inside, turn)

    def _robots(self, client):
        from urllib.robotparser import RobotFileParser

        rp = RobotFileParser()
        p = urlsplit(self.start)
        url = f"{p.scheme}://{p.netloc}/robots.txt"
        try:  # the start page's host, already checked (check_allowed): robots.txt lies outside the prefix
            self.requests += 1
            r = client.get(url)
            rp.parse(r.text.splitlines() if r.status_code == 200 else [])
        except Exception:
            rp.parse([])
        return rp

    def _fetch(self, client, robots, url: str) -> tuple[Optional[RemoteItem | Problem], list[str]]:
        """One page: (its item or problem, its links to follow). With `fetch_remote` set (the Ray
        executor) the page is fetched and read elsewhere: this crawl, the one place that starts
        fetches, keeps the politeness delay and the concurrency limit (its pool's threads)."""
        if not robots.can_fetch(USER_AGENT, url):
            return None, []
        old = self.state.get(url)
        headers = {}
        if old and old.get("conditional"):
            if old.get("etag"):
                headers["If-None-Match"] = old["etag"]
            if old.get("last_modified"):
                headers["If-Modified-Since"] = old["last_modified"]
        if self.fetch_remote is not None:
            return self._fetch_elsewhere(url, headers, old)
        try:
            final, resp, body = self._get(client, url, headers)
        except LoadError as e:
            return Problem(url, e.kind, e.message), []
        return page_result(self.uri, url, final, resp.status_code, resp.headers, body, old)

    def _fetch_elsewhere(
        self, url: str, headers: dict, old: Optional[dict]
    ) -> tuple[Optional[RemoteItem | Problem], list[str]]:
        """One page by fetch_remote, each request (a redirect's hops too) started here, in turn."""
        fetch = self.fetch_remote
        assert fetch is not None
        hop = url
        for _ in range(MAX_REDIRECTS + 1):
            try:
                check_allowed(hop, self.limits)
            except LoadError as e:
                return Problem(url, e.kind, e.message), []
            self._wait_turn()
            self.requests += 1
            item, links = fetch(hop, headers, old, self.uri, self.prefix)
            if isinstance(item, Redirect):
                hop = item.url
                continue
            if isinstance(item, Problem) and item.path == hop != url:
                item = Problem(url, item.kind, item.message)  # reported under the page the crawl asked for
            elif isinstance(item, RemoteItem) and item.not_modified:
                item.uri = url
            return item, links
        return Problem(url, "redirect_loop", f"more than {MAX_REDIRECTS} redirects: not followed"), []

    def items(self) -> Iterator[RemoteItem | Problem]:
        import httpx

        try:
            check_allowed(self.start, self.limits)
        except LoadError as e:
            yield Problem(self.uri, e.kind, e.message)
            return
        limits = httpx.Limits(max_connections=self.concurrency)
        with (
            _web_client(limits) as client,
            ThreadPoolExecutor(self.concurrency, thread_name_prefix="kbingest-crawl") as pool,
        ):
            robots = self._robots(client)
            if self.sitemap:
                try:
                    _, resp, body = self._get(client, self.start)
                    frontier = [u for u in _sitemap_urls(body) if self.inside(u)] if resp.status_code == 200 else []
                except LoadError as e:
                    yield Problem(self.uri, e.kind, e.message)
                    return
                depth_limit = 0
            else:
                frontier, depth_limit = [self.start], self.max_depth
            seen = set(frontier)
            taken, depth = 0, 0
            while frontier:
                batch = frontier[: self.max_pages - taken]
                frontier = []
                for item, links in pool.map(lambda u: self._fetch(client, robots, u), batch):
                    if item is None:
                        continue
                    if isinstance(item, RemoteItem):
                        seen.add(item.uri)
                    yield item
                    if depth < depth_limit:
                        for link in links:
                            if link not in seen and self.inside(link):
                                seen.add(link)
                                frontier.append(link)
                taken += len(batch)
                depth += 1
                if taken >= self.max_pages and frontier:
                    yield Problem(
                        self.uri, "too_many_files", f"more than {self.max_pages} pages found: stopped crawling here"
                    )
                    return


def web_user_agent() -> str:
    """The web client's User-Agent: kbingest, and the process that fetches (`kbingest-pid/PID`), so a
    server's log tells which process read what (on Ray: the workers, not the driver). robots.txt is
    matched against USER_AGENT alone."""
    return f"{USER_AGENT} kbingest-pid/{os.getpid()}"


def _web_client(limits=None):
    import httpx

    return httpx.Client(
        follow_redirects=False,
        timeout=WEB_TIMEOUT_S,
        limits=limits or httpx.Limits(max_connections=WEB_CONCURRENCY),
        headers={"User-Agent": web_user_agent()},
    )


def get_page(
    client, url: str, headers: Optional[dict], limits: LoadLimits, inside, turn: Callable[[], None], follow=True
):
    """GET with redirects followed by hand, each hop inside the prefix (`inside`) and allowed
    (check_allowed: the SSRF rules), within the size limit; `turn()` before each request (the
    politeness delay). Returns (final canonical url, response, body). Raises LoadError. With `follow`
    False a redirect inside the prefix is not followed: (its target, the 3xx response, no body)."""
    for _ in range(MAX_REDIRECTS + 1):
        check_allowed(url, limits)
        turn()
        try:
            with client.stream("GET", url, headers=headers or {}) as resp:
                if resp.status_code in _REDIRECTS and resp.headers.get("location"):
                    target = canonical_url(urljoin(url, resp.headers.get("location", "")))
                    if not inside(target):
                        raise LoadError(
                            "redirect_outside",
                            f"redirected out of the crawled prefix ({target[:200]}): not followed",
                        )
                    if not follow:
                        return target, resp, b""
                    url = target
                    continue
                body = b""
                if resp.status_code == 200:
                    declared = resp.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > limits.max_file_bytes:
                        raise LoadError(
                            "too_large",
                            f"page is too large ({declared} bytes, limit {limits.max_file_bytes}): not loaded",
                        )
                    parts, n = [], 0
                    for chunk in resp.iter_bytes():
                        n += len(chunk)
                        if n > limits.max_file_bytes:
                            raise LoadError(
                                "too_large",
                                f"page is larger than the limit ({limits.max_file_bytes} bytes): not loaded",
                            )
                        parts.append(chunk)
                    body = b"".join(parts)
                return url, resp, body
        except LoadError:
            raise
        except Exception as e:  # httpx's timeouts and connection errors
            raise LoadError("fetch_failed", f"cannot fetch the page: {_one_line(e)}") from None
    raise LoadError("redirect_loop", f"more than {MAX_REDIRECTS} redirects: not followed")


def page_result(
    root: str, url: str, final: str, status: int, headers, body: bytes, old: Optional[dict]
) -> tuple[RemoteItem | Problem, list[str]]:
    """A fetched page as the crawl takes it: (its item or problem, its links to follow)."""
    if status == 304 and old:
        item = RemoteItem(url, root, old.get("version"), None, not_modified=True, validators=old)
        return item, list(old.get("links", []))
    if status == 404 or status == 410:
        return Problem(url, "not_found", f"the server answered {status}: not loaded"), []
    if status != 200:
        return Problem(url, "http_error", f"the server answered {status}: not loaded"), []
    ctype = headers.get("content-type", "").split(";")[0].strip().lower()
    links = _links(body, final) if ctype in _HTML_TYPES else []
    validators = {"etag": headers.get("etag"), "last_modified": headers.get("last-modified"), "links": links}
    item = RemoteItem(final, root, None, len(body), read=lambda: (body, ctype), validators=validators)
    return item, links


def fetch_page(
    url: str,
    root: str,
    headers: dict,
    old: Optional[dict],
    limits: LoadLimits,
    prefix: str,
    keep: Callable[[Any], Any],
    extract: Callable[..., Any],
) -> dict:
    """One request of a page, and the page read here (a Ray worker; the crawl on the driver started
    it): the same conditional GET as the crawl's (get_page: limits, redirect and SSRF rules), its links,
    its text extracted by the format that reads it. A redirect inside the prefix is answered, not
    followed (the crawl starts the next hop: its politeness holds for every request). What goes back is
    small: the outcome, the links, the validators, the text's hash and format, and `keep(document)`'s
    handle to the text (which stays where it was read). A plain dict, for any transport. `extract` is
    loading.loaded_from_bytes (given: the loading imports this module)."""

    def inside(u: str) -> bool:
        return u.startswith(prefix) or u == prefix.rstrip("/")

    try:
        with _web_client() as client:
            final, resp, body = get_page(client, url, headers, limits, inside, lambda: None, follow=False)
            if resp.status_code in _REDIRECTS and final != url:
                return {"redirect": final}
            item, links = page_result(root, url, final, resp.status_code, resp.headers, body, old)
    except LoadError as e:
        return {"problem": (url, e.kind, e.message)}
    if isinstance(item, Problem):
        return {"problem": (item.path, item.kind, item.message)}
    if item.not_modified:
        return {"not_modified": True}
    out: dict = {"uri": item.uri, "size": item.size, "validators": item.validators, "links": links}
    data, ctype = item.read()
    try:
        fmt = format_for(item.uri, ctype)
        if fmt is None:
            raise LoadError("unsupported_format", "no format reads this document: not loaded")
        doc = extract(item.uri, root, data, fmt, limits)
    except LoadError as e:
        return {**out, "error": (e.kind, e.message)}
    except MemoryError as e:
        return {**out, "error": ("out_of_memory", _one_line(e))}
    return {
        **out,
        "content_hash": doc.content_hash,
        "fmt": fmt.name,
        "warnings": tuple(doc.warnings),
        "loaded": keep(doc),
    }


def item_from_fetched(
    meta: dict, url: str, root: str, old: Optional[dict]
) -> tuple[Optional[RemoteItem | Problem | Redirect], list[str]]:
    """fetch_page's answer as the crawl takes it (on the driver): an item holding no byte of the page,
    or the redirect it answered (the crawl starts the next hop)."""
    if "redirect" in meta:
        return Redirect(meta["redirect"]), []
    if "problem" in meta:
        return Problem(*meta["problem"]), []
    if meta.get("not_modified") and old:
        return RemoteItem(url, root, old.get("version"), None, not_modified=True, validators=old), list(
            old.get("links", [])
        )
    if meta.get("not_modified"):
        return Problem(url, "http_error", "the server answered 304 to an unconditional request: not loaded"), []
    links = list(meta.get("links", []))
    if "error" in meta:
        kind, message = meta["error"]

        def failed() -> tuple[bytes, Optional[str]]:
            raise LoadError(kind, message)

        return RemoteItem(meta["uri"], root, None, meta["size"], read=failed, validators=meta["validators"]), links
    item = RemoteItem(
        meta["uri"],
        root,
        None,
        meta["size"],
        validators=meta["validators"],
        loaded=meta["loaded"],
        content_hash=meta["content_hash"],
        fmt=meta["fmt"],
        warnings=tuple(meta.get("warnings", ())),
    )
    return item, links


_REGISTRY: dict[str, type] = {"s3": S3Source, "http": WebSource, "https": WebSource}


def open_source(uri: str, limits: LoadLimits, state: Optional[WebState] = None):
    scheme = uri.split("://", 1)[0].lower()
    cls = _REGISTRY.get(scheme)
    if cls is None:
        raise SourceUnusable(f"no source reads {scheme}:// URIs")
    return cls(uri, limits, state)


def validate_uri(uri: str) -> str:
    """A URI SOURCE checked for syntax (nothing is fetched); raise SourceUnusable."""
    if any(c in uri for c in "\x00\r\n\t "):
        raise SourceUnusable(f"source URI contains a control character or a space: {uri!r}")
    if uri.lower().startswith("s3://"):
        bucket, prefix = split_s3(uri)
        if prefix and not prefix.endswith("/"):  # a folder of the bucket, as a folder is a source
            prefix += "/"
        return f"s3://{bucket}/{prefix}"
    p = urlsplit(uri)
    if not p.hostname:
        raise SourceUnusable(f"no host in {uri!r}: expected https://HOST/PATH")
    return canonical_url(uri)


def format_for(uri: str, content_type: Optional[str]):
    """The format that reads a remote document: by its name's suffix, else (a page) by its content type."""
    if content_type in _HTML_TYPES:
        return formats.for_path("page.html")
    if content_type in ("text/markdown", "text/x-markdown"):
        return formats.for_path("page.md")
    fmt = formats.for_path(urlsplit(uri).path if "://" in uri else uri)
    if fmt is None and content_type and content_type.startswith("text/"):
        return formats.for_path("page.txt")
    return fmt
