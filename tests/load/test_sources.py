"""Issue 34: documents not on the local disk. `s3://bucket/prefix/` against moto's S3 server, and
`http://127.0.0.1:PORT/docs/` against a local site (links, robots.txt, a redirect out of the prefix,
a 404, a slow page, a page that changes between runs, ETag / Last-Modified)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import run_cli

from bench.moto_server import free_port as _free_port
from kbingest.pipeline.kb.table import KnowledgeBase
from kbingest.pipeline.models import LoadLimits
from kbingest.pipeline.paths import Home
from kbingest.pipeline.service import Service
from kbingest.pipeline.status import JobStatus

BUCKET = "kbingest-sources"
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


# ------------------------------------------------------------------------------------- S3
# moto's server: the session's `s3_endpoint` (tests/conftest.py), with this file's bucket


@pytest.fixture
def s3(s3_endpoint, monkeypatch, request):
    for k, v in dict(AWS, AWS_ENDPOINT_URL=s3_endpoint).items():
        monkeypatch.setenv(k, v)
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    prefix = request.node.name.replace("_", "-") + "/"
    return client, f"s3://{BUCKET}/{prefix}", prefix


def _put(client, key: str, n: int, extra: str = "") -> None:
    client.put_object(
        Bucket=BUCKET,
        Key=key,
        Body=f"# Object {n}\n\nThe words of object {n}, about topic {n} alone. {extra}\n".encode(),
    )


def _ingest(svc: Service, sources, kb="docs", **settings):
    job = svc.start(svc.config(list(sources), kb, embedder="fake", **settings))
    snap = job.run()
    assert snap.status == JobStatus.COMPLETED, snap.error
    return job, snap


def _stored(home, kb="docs") -> dict[str, str]:
    return {s.source: s.version for s in KnowledgeBase(home, kb).stored_docs().values()}


def _counting_gets(monkeypatch) -> list[str]:
    """Every object downloaded (GetObject) in this process."""
    from kbingest.pipeline.load import sources

    got: list[str] = []
    real = sources.S3Source._reader

    def reader(self, client, key):
        inner = real(self, client, key)

        def read():
            got.append(key)
            return inner()

        return read

    monkeypatch.setattr(sources.S3Source, "_reader", reader)
    return got


def test_s3_prefix_ingests_skips_unchanged_without_download_and_removes_deleted(home, s3, monkeypatch):
    client, uri, prefix = s3
    for i in range(4):
        _put(client, f"{prefix}doc{i}.md", i)
    _put(client, f"{prefix}image.bin", 9)  # no format reads it: not a document
    client.put_object(Bucket=BUCKET, Key="elsewhere/other.md", Body=b"# Other\n\nNot under the prefix.\n")
    svc = Service(home)
    _, snap = _ingest(svc, [uri])
    assert snap.m.documents_added == 4
    stored = _stored(home)
    assert sorted(stored) == [f"{uri}doc{i}.md" for i in range(4)]  # identity: the URI

    got = _counting_gets(monkeypatch)
    _, snap = _ingest(svc, [uri])  # unchanged: skipped from the listing alone
    assert snap.m.documents_skipped == 4 and not snap.m.documents_added
    assert got == []

    _put(client, f"{prefix}doc1.md", 1, extra="Changed.")
    client.delete_object(Bucket=BUCKET, Key=f"{prefix}doc3.md")
    _, snap = _ingest(svc, [uri])
    assert got == [f"{prefix}doc1.md"]  # only the changed object is downloaded
    assert snap.m.documents_replaced == 1 and snap.m.documents_removed == 1
    assert sorted(_stored(home)) == [f"{uri}doc{i}.md" for i in range(3)]
    hits = svc.search("docs", "object 1 changed", k=1)
    assert hits[0].source == f"{uri}doc1.md"  # search shows the URI


def test_s3_mass_removal_guard_applies(home, s3):
    client, uri, prefix = s3
    for i in range(4):
        _put(client, f"{prefix}doc{i}.md", i)
    svc = Service(home)
    _ingest(svc, [uri])
    for i in range(3):
        client.delete_object(Bucket=BUCKET, Key=f"{prefix}doc{i}.md")
    _, snap = _ingest(svc, [uri])
    assert not snap.m.documents_removed
    assert any(e.kind == "mass_removal_refused" for e in snap.errors)
    assert len(_stored(home)) == 4


def test_s3_listing_failure_removes_nothing(home, s3, monkeypatch):
    client, uri, prefix = s3
    for i in range(3):
        _put(client, f"{prefix}doc{i}.md", i)
    svc = Service(home)
    _ingest(svc, [uri])
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")  # nothing listens
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    _, snap = _ingest(svc, [uri], max_removal_share=1.0)  # no guard: the failed listing alone keeps them
    assert [e.kind for e in snap.errors] == ["list_failed"]
    assert not snap.m.documents_removed and len(_stored(home)) == 3


def test_s3_cli_ingest_and_status_show_the_uri(tmp_path, s3):
    client, uri, prefix = s3
    _put(client, f"{prefix}a.md", 1)
    h = tmp_path / "clihome"
    r = run_cli("ingest", uri, "--kb", "docs", "--batch", "--embedder", "fake", home=h)
    assert r.returncode == 0, r.stderr
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert last["status"] == "completed" and last["metrics"]["documents_added"] == 1
    r = run_cli("jobs", "--json", home=h)
    assert r.returncode == 0, r.stderr
    assert uri in r.stdout  # the job's sources, as the URI
    r = run_cli("search", "object 1", "--kb", "docs", "--json", home=h)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["source"] == f"{uri}a.md"


def test_s3_listing_feeds_the_eta_its_sizes_and_settles_the_skipped(s3):
    """The ETA's bytes (issue 34): each listed object's size is added as it is listed, as a scoped walk
    adds a file's; an unchanged object's bytes are settled at once (a changed one's when chunked)."""
    from test_stages import RecordingReporter

    from kbingest.pipeline.job.control import RunControl
    from kbingest.pipeline.kb import ids
    from kbingest.pipeline.kb.kbstate import StoredDoc
    from kbingest.pipeline.models import JobConfig
    from kbingest.pipeline.stages.load import LoadStage

    client, uri, prefix = s3
    for i in range(3):
        _put(client, f"{prefix}d{i}.md", i, "x" * (100 * i))
    sizes = sorted(o["Size"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"])
    config = JobConfig(sources=[uri], kb="docs", embedder="fake")
    r = RecordingReporter()
    docs = list(LoadStage(config, r, RunControl(), stored={}))
    assert len(docs) == 3
    assert sorted(n for (n,) in r.named("add_bytes")) == sizes
    assert r.named("settle_bytes") == []  # all to chunk: ChunkStage settles them
    stored = {d.doc_id: StoredDoc(d.version, d.path, 1) for d in docs}
    r = RecordingReporter()
    assert list(LoadStage(config, r, RunControl(), stored=stored)) == []
    assert sorted(n for (n,) in r.named("add_bytes")) == sizes
    assert sorted(n for n, _ in r.named("settle_bytes")) == sizes  # unchanged: nothing left to chunk
    assert ids.doc_id(f"{uri}d0.md") in stored


def test_a_deferred_s3_object_is_planned_not_read_and_the_worker_reads_it(s3, s3_server):
    """With the Ray executor's deferral (LoadStage.defer_remote) a changed object is planned from its
    listing (Doc.fetch: URI, source, size; nothing loaded) and this process GETs no object; the worker's
    read (ray_workers.fetch_document) loads it with the job's limits, and an object it may not read is
    that document's loading error, its bytes settled."""
    from test_stages import RecordingReporter

    from kbingest.pipeline.executors.ray_workers import RecordingReporter as WorkerReporter
    from kbingest.pipeline.executors.ray_workers import fetch_document
    from kbingest.pipeline.job.control import RunControl
    from kbingest.pipeline.models import JobConfig
    from kbingest.pipeline.stages.load import LoadStage
    from kbingest.pipeline.status import JobPhase

    client, uri, prefix = s3
    _put(client, f"{prefix}a.md", 1)
    _put(client, f"{prefix}b.md", 2)
    config = JobConfig(sources=[uri], kb="docs", embedder="fake")
    stage = LoadStage(config, RecordingReporter(), RunControl(), stored={})
    stage.defer_remote = True
    before = len(s3_server.requests())
    docs = sorted(stage, key=lambda d: d.path)
    assert [(d.path, d.loaded, d.fetch.uri, d.fetch.root) for d in docs] == [
        (f"{uri}a.md", None, f"{uri}a.md", uri),
        (f"{uri}b.md", None, f"{uri}b.md", uri),
    ]
    assert all(d.version and d.fetch.size > 0 for d in docs)
    assert [r for r in s3_server.requests()[before:] if r.object_get] == []  # planned: not read
    s3_server.denied.add(f"/{BUCKET}/{prefix}b.md")
    rec = WorkerReporter()
    read = fetch_document(docs[0], config, rec)
    assert read is not None and read.fetch is None and "object 1" in read.loaded.text
    assert (read.doc_id, read.version, read.path) == (docs[0].doc_id, docs[0].version, docs[0].path)
    rec.take()
    assert fetch_document(docs[1], config, rec) is None
    calls = rec.take()
    (call,) = [args for name, args in calls if name == "doc_error"]
    assert call[:3] == (f"{uri}b.md", JobPhase.LOADING, "read_failed") and "AccessDenied" in call[3]
    assert ("settle_bytes", (docs[1].fetch.size,)) in calls


# ------------------------------------------------------------------------------------ web


class Site:
    """A small site on 127.0.0.1: pages under /docs/, robots.txt, ETag and Last-Modified honoured."""

    def __init__(self) -> None:
        self.pages: dict[str, tuple[int, dict, bytes]] = {}
        self.requests: list[tuple[str, int]] = []  # (path, status answered)
        self.lock = threading.Lock()
        self.slow = 0.0
        site = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                path = self.path
                if path == "/docs/slow.html" and site.slow:
                    time.sleep(site.slow)
                entry = site.pages.get(path)
                if entry is None:
                    status, headers, body = 404, {"Content-Type": "text/plain"}, b"not found"
                else:
                    status, headers, body = entry
                    etag = headers.get("ETag")
                    if etag and self.headers.get("If-None-Match") == etag:
                        status, body = 304, b""
                with site.lock:
                    site.requests.append((path, status))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def page(self, path: str, title: str, body: str, links=(), etag: bool = True) -> None:
        html = (
            f"<html><head><title>{title}</title></head><body><h1>{title}</h1><p>{body}</p>"
            + "".join(f'<a href="{u}">{u}</a> ' for u in links)
            + "</body></html>"
        ).encode()
        headers = {"Content-Type": "text/html; charset=utf-8"}
        if etag:
            headers["ETag"] = f'"{abs(hash(html))}"'
        self.pages[path] = (200, headers, html)

    def hits(self, path: str) -> list[int]:
        with self.lock:
            return [s for p, s in self.requests if p == path]


@pytest.fixture
def site():
    s = Site()
    s.pages["/robots.txt"] = (200, {"Content-Type": "text/plain"}, b"User-agent: *\nDisallow: /docs/private/\n")
    s.page(
        "/docs/",
        "Home",
        "The start page of the documentation.",
        links=[
            "guide.html",
            "api.html#section",
            "missing.html",
            "away.html",
            "private/secret.html",
            "/outside.html",
            "slow.html",
        ],
    )
    s.page(
        "/docs/guide.html", "Guide", "How to install the widget and configure it.", links=["deep/page.html", "/docs/"]
    )
    s.page("/docs/api.html", "API", "The widget API reference: frobnicate takes two arguments.")
    s.page("/docs/deep/page.html", "Deep", "A page two links from the start, about sprockets.")
    s.page("/docs/private/secret.html", "Secret", "robots.txt says no.")
    s.page("/docs/slow.html", "Slow", "A page that answers slowly, about gears.", etag=False)
    s.page("/outside.html", "Outside", "Not under the prefix.")
    s.pages["/docs/away.html"] = (302, {"Location": "/outside.html"}, b"")
    yield s
    s.server.shutdown()


def test_crawl_within_prefix_honours_robots_redirects_and_404(home, site):
    svc = Service(home)
    site.slow = 0.5
    _, snap = _ingest(svc, [site.base + "/docs/"])
    stored = _stored(home)
    d = site.base + "/docs/"
    assert sorted(stored) == sorted([d, d + "guide.html", d + "api.html", d + "deep/page.html", d + "slow.html"])
    assert site.hits("/docs/private/secret.html") == []  # robots.txt honoured
    assert site.hits("/outside.html") == []  # neither a link nor a redirect out of the prefix
    kinds = {e.path: e.kind for e in snap.errors}
    assert kinds[d + "missing.html"] == "not_found"  # a page that fails is one document's error
    assert kinds[d + "away.html"] == "redirect_outside"
    assert len(site.hits("/docs/api.html")) == 1  # the fragment dropped: one page
    hits = svc.search("docs", "frobnicate arguments", k=1)
    assert hits[0].source == d + "api.html"


def test_crawl_rerun_sends_conditional_requests_and_follows_changes(home, site):
    svc = Service(home)
    d = site.base + "/docs/"
    _ingest(svc, [d])
    site.requests.clear()
    _, snap = _ingest(svc, [d])
    assert site.hits("/docs/guide.html") == [304] and site.hits("/docs/deep/page.html") == [304]  # links kept
    assert snap.m.documents_skipped == 5 and not snap.m.documents_added and not snap.m.documents_replaced
    site.page("/docs/api.html", "API", "The widget API reference: frobnicate now takes three arguments.")
    del site.pages["/docs/deep/page.html"]
    _, snap = _ingest(svc, [d])
    assert snap.m.documents_replaced == 1 and snap.m.documents_removed == 1
    assert d + "deep/page.html" not in _stored(home)
    assert "three" in svc.search("docs", "frobnicate", k=1)[0].text


def test_sitemap_lists_the_pages(home, site):
    d = site.base + "/docs/"
    site.pages["/docs/sitemap.xml"] = (
        200,
        {"Content-Type": "application/xml"},
        f"<urlset><url><loc>{d}api.html</loc></url><url><loc>{d}guide.html</loc>"
        f"</url><url><loc>{site.base}/outside.html</loc></url></urlset>".encode(),
    )
    _ingest(Service(home), [d + "sitemap.xml"])
    assert sorted(_stored(home)) == [d + "api.html", d + "guide.html"]


def test_a_crawl_fetching_elsewhere_keeps_its_politeness_and_follows_the_links_it_gets(site):
    """WebSource.fetch_remote (the Ray executor's workers fetch): the crawl still starts every request,
    a redirect's next hop too, at most `concurrency` at once and `delay` apart however long a fetch
    takes, follows the links the fetcher found, and takes a page's text as the fetcher's handle (never
    its bytes)."""
    from kbingest.pipeline.load import sources
    from kbingest.pipeline.load.loading import loaded_from_bytes

    d = site.base + "/docs/"
    home_links = ["guide.html", "api.html#section", "missing.html", "away.html", "moved.html", "slow.html"]
    site.page("/docs/", "Home", "The start page of the documentation.", links=home_links)
    site.pages["/docs/moved.html"] = (301, {"Location": "/docs/new.html"}, b"")  # inside the prefix
    site.page("/docs/new.html", "New", "Where the moved page went.")
    src = sources.WebSource(d, LoadLimits(), delay=0.1, concurrency=2)
    starts: list[float] = []
    running, most = [0], [0]
    lock = threading.Lock()

    def fetch(url, headers, old, root, prefix):
        with lock:
            starts.append(time.monotonic())
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.3)  # a fetch far longer than the delay: the limit, not the delay, holds them back
            meta = sources.fetch_page(
                url,
                root,
                headers,
                old,
                LoadLimits(),
                prefix,
                keep=lambda doc: ("ref", doc.path),
                extract=loaded_from_bytes,
            )
            return sources.item_from_fetched(meta, url, root, old)
        finally:
            with lock:
                running[0] -= 1

    src.fetch_remote = fetch
    items = list(src.items())
    pages = {i.uri: i for i in items if isinstance(i, sources.RemoteItem)}
    assert sorted(pages) == sorted(
        [d, d + "guide.html", d + "api.html", d + "deep/page.html", d + "slow.html", d + "new.html"]
    )
    assert all(i.loaded == ("ref", u) and i.content_hash and i.fmt == "html" for u, i in pages.items())
    assert {(p.path, p.kind) for p in items if isinstance(p, sources.Problem)} == {
        (d + "missing.html", "not_found"),
        (d + "away.html", "redirect_outside"),
    }
    assert most[0] == 2  # the concurrency limit held (and was used)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert len(starts) == 9 and min(gaps) >= 0.1 - 0.005, gaps  # the delay between starts held: 8 pages, 1 hop
    assert site.hits("/docs/moved.html") == [301] and site.hits("/docs/new.html") == [200]


def test_server_jobs_may_not_fetch_private_addresses_or_outside_allowed_prefixes():
    from kbingest.pipeline.load.formats.base import LoadError
    from kbingest.pipeline.load.sources import check_allowed

    server = LoadLimits(allowed_urls=("https://docs.example.org/", "http://127.0.0.1:8080/docs/"))
    check_allowed("http://127.0.0.1:8080/docs/a.html", server)  # the operator named this host
    check_allowed("http://127.0.0.1:9999/x", LoadLimits())  # the CLI: its operator is the user
    for url in ("http://127.0.0.1:8080/admin", "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/docs/"):
        with pytest.raises(LoadError) as e:
            check_allowed(url, server)
        assert e.value.kind == "not_allowed"
    rebinding = LoadLimits(allowed_urls=("http://localtest.invalid/",))
    import kbingest.pipeline.load.sources as sources

    orig = sources._addresses
    try:
        sources._addresses = lambda host, port: ["127.0.0.1"]  # a public name that resolves to the loopback
        with pytest.raises(LoadError) as e:
            check_allowed("http://localtest.invalid/page", rebinding)
        assert "private" in e.value.message
    finally:
        sources._addresses = orig


def test_serve_starts_crawls_only_under_allow_url(tmp_path, site):
    import httpx
    from live_server import ThreadServer

    API = "/api/ingestion"
    d = site.base + "/docs/"
    s = ThreadServer(tmp_path / "h", allow_urls=["https://docs.example.org/", d])
    try:
        with httpx.Client(base_url=s.url, timeout=60) as c:
            r = c.post(f"{API}/kb/docs/jobs", json={"sources": [site.base + "/outside.html"], "embedder": "fake"})
            assert r.status_code == 403, r.text
            assert "--allow-url" in r.json()["message"]
            r = c.post(f"{API}/kb/docs/jobs", json={"sources": [d], "embedder": "fake"})
            assert r.status_code == 202, r.text
            job_id, deadline = r.json()["job_id"], time.monotonic() + 120
            while (status := c.get(f"{API}/jobs/{job_id}").json()["status"])["status"] not in ("completed", "failed"):
                assert time.monotonic() < deadline, status
                time.sleep(0.1)
            assert status["status"] == "completed", status
            assert status["metrics"]["documents_added"] == 5
    finally:
        s.stop()


def test_watch_polls_an_s3_prefix_every_interval(home, s3):
    client, uri, prefix = s3
    _put(client, f"{prefix}a.md", 1)
    svc = Service(home)
    job = svc.watch(svc.config([uri], "docs", embedder="fake", interval=1))
    th = threading.Thread(target=job.run)
    th.start()
    try:
        deadline = time.monotonic() + 60
        while not job.snapshot().message.startswith("watching"):
            assert time.monotonic() < deadline, job.snapshot().message
            time.sleep(0.1)
        _put(client, f"{prefix}b.md", 2, extra="Arrived while watched: echidna.")
        while f"{uri}b.md" not in _stored(home):  # the next listing, about a second later
            assert time.monotonic() < deadline, job.snapshot().to_json()
            time.sleep(0.2)
    finally:
        job.pause()
        th.join(60)
    assert not th.is_alive()
    assert (job.snapshot().m.watch_bursts or 0) >= 1


def test_cli_refuses_a_malformed_uri_and_serve_a_malformed_allow_url(tmp_path):
    r = run_cli("ingest", "https:///nohost", "--kb", "docs", "--batch", home=tmp_path / "h")
    assert r.returncode == 2 and "no host" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("serve", "--allow-url", "/not/a/url", "--port", str(_free_port()), home=tmp_path / "h")
    assert r.returncode == 2 and "--allow-url" in r.stderr, r.stderr


def test_dashboard_search_lists_a_remote_document_by_its_uri():
    from kbingest.app.screens.console import source_label

    assert source_label("https://docs.example.org/guide/install.html") == "https://docs.example.org/guide/install.html"
    assert source_label("s3://bucket/manuals/a.md") == "s3://bucket/manuals/a.md"
    assert source_label("/home/u/docs/a.md") == "a.md"


@pytest.mark.xdist_group("ray")
def test_crawl_on_ray_ingests_reruns_and_removes_like_threads(tmp_path, site):
    """--executor ray (a private local Ray): the driver crawls, the workers fetch and read the pages
    (tests/executors: which process fetched what); the table holds the same pages, a re-run skips them
    all, a page gone is removed."""
    pytest.importorskip("ray")
    d = site.base + "/docs/"
    ray = ("--executor", "ray", "--ray-embed-actors", "1", "--ray-wave-docs", "2")

    def ingest(*extra):
        r = run_cli(
            "ingest", d, "--kb", "docs", "--batch", "--embedder", "fake", *extra, home=tmp_path / "h", timeout=600
        )
        assert r.returncode == 3, r.stderr  # completed, with the site's 404 and redirect as document errors
        last = json.loads(r.stdout.strip().splitlines()[-1])
        assert last["status"] == "completed"
        return last["metrics"]

    assert ingest(*ray)["documents_added"] == 5
    m = ingest(*ray)
    assert m["documents_skipped"] == 5 and not m.get("documents_added")
    del site.pages["/docs/deep/page.html"]
    m = ingest(*ray)
    assert m["documents_removed"] == 1
    assert sorted(_stored(Home(tmp_path / "h"))) == sorted([d, d + "guide.html", d + "api.html", d + "slow.html"])


def test_an_s3_prefix_is_a_folder_of_the_bucket(home, s3):
    client, uri, prefix = s3
    _put(client, f"{prefix}a/x.md", 1)
    _put(client, f"{prefix}ab/y.md", 2)  # beside the folder a/, not in it
    _ingest(Service(home), [uri + "a"])
    assert sorted(_stored(home)) == [f"{uri}a/x.md"]
