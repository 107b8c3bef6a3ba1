"""Issue 34's figure `sources`: documents not on the local disk.

- An unchanged re-run of N objects (10,000; 1,000 with --quick) under an `s3://` prefix of moto's S3
  server: its time, against the unchanged re-run of the same N documents as local files (the baseline,
  same run), and the objects downloaded (goal 0: the skip is decided from the listing's ETags).
- A crawl of a site of P pages (200; 60 with --quick) on a local HTTP server (127.0.0.1): pages per
  second (with the politeness delay, sources.WEB_DELAY_S, and WEB_CONCURRENCY fetches at once), against
  the same pages ingested as local .html files (documents per second, same run).
- The bytes the Ray driver reads per document of an s3:// prefix (64; 16 with --quick) on a real local
  Ray, before (the driver reads the objects) and after (the workers read them; goal 0), counted from
  moto's request log by client process (driver_rows); the same for the pages of a crawl (as many, on
  a local HTTP server that logs each answer's bytes by the client's User-Agent, kbingest-pid/PID).

All run in this process through the Service with the fake embedder (the figure is the loading's: an
unchanged re-run loads no model).

    python -m bench --only sources
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bench.common import Row, log

BUCKET = "kbingest-bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(svc, sources, kb):
    from kbingest.pipeline.status import JobStatus

    job = svc.start(svc.config(list(sources), kb, embedder="fake"))
    t0 = time.perf_counter()
    snap = job.run()
    took = time.perf_counter() - t0
    if snap.status != JobStatus.COMPLETED:
        raise RuntimeError(f"job {kb}: {snap.status.value}: {snap.error}")
    return snap, took


def _text(i: int) -> str:
    return f"# Document {i}\n\nThe words of document {i}, about topic {i % 97} and item {i}.\n"


def rerun_rows(ctx) -> list[Row]:
    import os

    import boto3
    from moto.server import ThreadedMotoServer

    from kbingest.pipeline.load import sources
    from kbingest.pipeline.service import Service

    n = 1000 if ctx.quick else 10_000
    root = ctx.ws.root / "sources"
    folder = root / "local"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"d{i:05d}.md").write_text(_text(i))
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {
        k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ENDPOINT_URL")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
    )
    try:
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        log(f"sources: putting {n} objects into moto")
        for i in range(n):
            client.put_object(Bucket=BUCKET, Key=f"docs/d{i:05d}.md", Body=_text(i).encode())
        svc = Service(root / "home")
        uri = f"s3://{BUCKET}/docs/"
        _run(svc, [str(folder)], "local")
        _run(svc, [uri], "remote")
        downloads: list[int] = []
        real = sources.S3Source._reader

        def reader(self, c, key):
            inner = real(self, c, key)

            def read():
                downloads.append(1)
                return inner()

            return read

        sources.S3Source._reader = reader
        try:
            local_s, remote_s = [], []
            for _ in range(ctx.reps(3, 1)):
                snap, took = _run(svc, [str(folder)], "local")
                assert snap.m.documents_skipped == n, snap.m
                local_s.append(took)
                snap, took = _run(svc, [uri], "remote")
                assert snap.m.documents_skipped == n, snap.m
                remote_s.append(took)
        finally:
            sources.S3Source._reader = real
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    best_l, best_r = min(local_s), min(remote_s)
    return [
        Row(
            "34.s3_rerun_s",
            f"unchanged re-run of {n} objects under an s3:// prefix (moto), seconds",
            "s",
            remote_s,
            note=f"local files baseline (same {n} documents, same run): {best_l:.2f} s",
        ),
        Row(
            "34.s3_rerun_ratio",
            f"unchanged re-run, s3:// over local files ({n} documents)",
            "x",
            [best_r / best_l],
            note="moto's listing is 1,000 keys a request, on the loopback",
        ),
        Row(
            "34.s3_rerun_downloads",
            f"objects downloaded by the unchanged re-runs of {n} objects",
            "objects",
            [float(len(downloads))],
            op="<=",
            target=0,
            goal="0: skipped from the listing's ETags",
        ),
    ]


def crawl_rows(ctx) -> list[Row]:
    from kbingest.pipeline.load import sources
    from kbingest.pipeline.service import Service

    p = 60 if ctx.quick else 200
    root = ctx.ws.root / "crawl"
    folder = root / "local"
    folder.mkdir(parents=True, exist_ok=True)
    pages = {}
    for i in range(p):
        links = "".join(f'<a href="p{j}.html">page {j}</a> ' for j in (i + 1, i * 2 + 1, i * 3 + 2) if j < p)
        html = (
            f"<html><head><title>Page {i}</title></head><body><h1>Page {i}</h1><p>{_text(i)}</p>{links}</body></html>"
        ).encode()
        pages[f"/site/p{i}.html"] = html
        (folder / f"p{i}.html").write_bytes(html)

    httpd, _ = _pid_logged_site(pages)
    try:
        svc = Service(root / "home")
        crawl, local = [], []
        for r in range(ctx.reps(3, 1)):
            snap, took = _run(svc, [f"http://127.0.0.1:{httpd.server_address[1]}/site/p0.html"], f"web{r}")
            crawl.append((snap.m.documents_added or 0) / took)
            snap, took = _run(svc, [str(folder)], f"local{r}")
            local.append((snap.m.documents_added or 0) / took)
    finally:
        httpd.shutdown()
    return [
        Row(
            "34.crawl_pages_s",
            f"crawl of a {p}-page site on 127.0.0.1, pages/s (new pages, fake embedder)",
            "pages/s",
            crawl,
            note=f"politeness delay {sources.WEB_DELAY_S} s, {sources.WEB_CONCURRENCY} at once; "
            f"the same pages as local files: {max(local):.1f} docs/s",
        ),
        Row(
            "34.crawl_ratio",
            "crawl pages/s over the same pages as local .html files (docs/s)",
            "x",
            [max(crawl) / max(local)],
        ),
    ]


def driver_rows(ctx) -> list[Row]:
    """Bytes the Ray driver reads of each document of an s3:// prefix (issue 34 item 3), before (the
    driver reads the objects and ships their text: RayExecutor.workers_fetch False, the code before)
    and after (the workers read them). Counted from moto's request log by client process
    (bench/moto_server.py: kbingest's S3 client names its pid in its user agent): the bytes of the
    object GETs answered to this process (the driver) over the documents, and those answered to the
    cluster's workers. A real local Ray (2 CPUs, started here), the fake embedder."""
    import os
    import shutil
    import tempfile

    import ray

    from bench.moto_server import LoggedMotoServer
    from kbingest.pipeline.executors.ray import RayExecutor
    from kbingest.pipeline.service import Service

    n = 16 if ctx.quick else 64
    site, answered = _pid_logged_site(
        {
            f"/site/p{i}.html": (
                f"<html><head><title>Page {i}</title></head><body><h1>Page {i}</h1><p>{_text(i) * 40}</p>"
                + "".join(f'<a href="p{j}.html">page {j}</a> ' for j in (2 * i + 1, 2 * i + 2) if j < n)
                + "</body></html>"
            ).encode()
            for i in range(n)
        }
    )
    web = f"http://127.0.0.1:{site.server_address[1]}/site/p0.html"
    server = LoggedMotoServer().start()
    server.create_buckets(BUCKET)
    saved = {
        k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ENDPOINT_URL")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION="us-east-1",
        AWS_ENDPOINT_URL=server.url,
    )
    temp = tempfile.mkdtemp(prefix="kbb-")
    try:
        import boto3

        client = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1")
        for i in range(n):  # documents of about 3.3 KB
            client.put_object(Bucket=BUCKET, Key=f"ray/d{i:03d}.md", Body=(_text(i) * 50).encode())
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # as RaySession: Ray's notes are not ours
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=100 * 1024 * 1024,
            _temp_dir=temp,
            log_to_driver=False,
            configure_logging=False,
        )
        svc = Service(ctx.ws.root / "ray-sources" / "home")
        per_doc: dict[bool, tuple[float, float]] = {}
        web_per_doc: dict[bool, tuple[float, float]] = {}
        for fetch in (False, True):
            RayExecutor.workers_fetch = fetch
            before = len(server.requests())
            settings = dict(embedder="fake", executor="ray", ray_embed_actors=1, ray_wave_docs=16)
            job = svc.start(svc.config([f"s3://{BUCKET}/ray/"], f"ray-{'after' if fetch else 'before'}", **settings))
            snap = job.run()
            if snap.m.documents_added != n:
                raise RuntimeError(f"ray job: {snap.status.value}: {snap.error} ({snap.m.documents_added} added)")
            gets = [r for r in server.requests()[before:] if r.object_get]
            driver = sum(r.body_bytes for r in gets if r.pid == os.getpid())
            workers = sum(r.body_bytes for r in gets if r.pid != os.getpid())
            per_doc[fetch] = (driver / n, workers / n)
            before = len(answered)
            job = svc.start(svc.config([web], f"ray-web-{'after' if fetch else 'before'}", **settings))
            snap = job.run()
            if snap.m.documents_added != n:
                raise RuntimeError(f"ray crawl: {snap.status.value}: {snap.error} ({snap.m.documents_added} added)")
            pages = [a for a in answered[before:] if a[0].startswith("/site/")]  # robots.txt is no document
            driver = sum(b for _, pid, b in pages if pid == os.getpid())
            workers = sum(b for _, pid, b in pages if pid != os.getpid())
            web_per_doc[fetch] = (driver / n, workers / n)
    finally:
        RayExecutor.workers_fetch = True
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        server.stop()
        site.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    (drv_before, _), (drv_after, wrk_after) = per_doc[False], per_doc[True]
    (web_before, _), (web_after, web_workers) = web_per_doc[False], web_per_doc[True]
    site_how = "the site's log of page bytes by client pid (User-Agent kbingest-pid/PID); robots.txt not counted"
    how = "moto's log of object GETs by client pid (user agent kbingest-pid/PID)"
    return [
        Row(
            "34.ray_driver_bytes_before",
            f"bytes the Ray driver reads per s3:// document, driver reads ({n} objects, before)",
            "B/doc",
            [drv_before],
            note=how,
        ),
        Row(
            "34.ray_driver_bytes_after",
            f"bytes the Ray driver reads per s3:// document, workers read ({n} objects, after)",
            "B/doc",
            [drv_after],
            op="<=",
            target=0,
            goal="0: no document passes through the driver",
            note=f"{how}; the workers read {wrk_after:.0f} B/doc",
        ),
        Row(
            "34.ray_driver_bytes_ratio",
            "bytes the Ray driver reads per s3:// document, after over before (same run)",
            "x",
            [drv_after / drv_before if drv_before else float("nan")],
            op="<=",
            target=0,
            goal="0",
        ),
        Row(
            "34.ray_driver_web_bytes_before",
            f"bytes the Ray driver reads per crawled page, driver fetches ({n} pages, before)",
            "B/doc",
            [web_before],
            note=site_how,
        ),
        Row(
            "34.ray_driver_web_bytes_after",
            f"bytes the Ray driver reads per crawled page, workers fetch ({n} pages, after)",
            "B/doc",
            [web_after],
            op="<=",
            target=0,
            goal="0: no page passes through the driver (it crawls: links, validators)",
            note=f"{site_how}; the workers read {web_workers:.0f} B/doc",
        ),
        Row(
            "34.ray_driver_web_bytes_ratio",
            "bytes the Ray driver reads per crawled page, after over before (same run)",
            "x",
            [web_after / web_before if web_before else float("nan")],
            op="<=",
            target=0,
            goal="0",
        ),
    ]


def _pid_logged_site(pages: dict[str, bytes]):
    """A site on 127.0.0.1 answering `pages` (404 else) and logging (path, client pid, body bytes): the
    pid from kbingest's User-Agent (sources.web_user_agent), None for another client."""
    import re

    answered: list[tuple[str, int | None, int]] = []

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            body = pages.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html" if body else "text/plain")
            body = body or b"no"
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            m = re.search(r"kbingest-pid/(\d+)", self.headers.get("User-Agent") or "")
            answered.append((self.path, int(m.group(1)) if m else None, len(body)))

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, answered


def fig_sources(ctx) -> list[Row]:
    return rerun_rows(ctx) + crawl_rows(ctx) + driver_rows(ctx)
