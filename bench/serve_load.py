"""Load on `kbingest serve` while a job ingests (issues 15, 29): 50 clients polling the kb status at
10 Hz plus one SSE client, against the same job with no clients, in one run, alternating (A B, B A).

    python -m bench.serve_load [--pages 16] [--reps 2] [--clients 50] [--hz 10] [--client-nice 10]
                               [--pin-cpu N] [--json]

Only 127.0.0.1; every job and the whole run are bounded in time; the server is stopped at the end.
The server runs with its default settings (the rate limit included: loopback peers are not counted,
docs/serve.md). Half the polling clients poll plainly (a 200 and the whole status each time), half
honour the ETag (`If-None-Match`: a 304 while the status is unchanged); each kind's latencies are
reported apart. The clients are HTTP/1.1 keep-alive connections (one request at a time each) driven
from one thread on epoll (`Pollers`), so that the load generator takes little of the CPU the job and
the server share with it; the SSE client is asyncio. The load generator runs at a lower priority
(`--client-nice`, default 10) or pinned to one CPU (`--pin-cpu`, as `taskset`): the output says
which. The CPU seconds of the server and of the load generator are reported per job (/proc).
Figures: p99 (and p50, max) status latency under load; job throughput (chunks indexed / job
wall time, real model) with clients over without, per pair, and its median.

`--floor` (a diagnostic, needs nginx on the PATH or in /usr/sbin) adds a third job to each round:
the same clients polling a static copy of the status (same bytes) served by nginx, one process, on
127.0.0.1, while the job runs in `kbingest serve` exactly as before (the SSE client included). Its
ratio to the job without clients is what the job would keep if the status poll cost what a C
server takes to answer it: the floor that the load generator and this machine's loopback leave.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

from bench.common import REPO, bench_env, corpus_pages, corpus_root, log, median, spread

HOST = "127.0.0.1"  # never anything else
API = "/api/ingestion"
JOB_TIMEOUT_S = 300.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _copy_subset(dest: Path, n: int) -> Path:
    root = corpus_root()
    for p in spread(corpus_pages(root), n):
        out = dest / p.relative_to(root)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, out)
    return dest


# ---- a tiny HTTP/1.1 client --------------------------------------------------------------------
async def _request(reader, writer, raw: bytes) -> tuple[int, bytes]:
    writer.write(raw)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:].strip())
    body = await reader.readexactly(length) if length else b""
    return status, body


def _get(path: str, etag: bytes = b"") -> bytes:
    conditional = b"If-None-Match: " + etag + b"\r\n" if etag else b""
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: keep-alive\r\n".encode() + conditional + b"\r\n"


KINDS = ("plain", "etag")  # the two kinds of pollers: every other client honours the ETag


def kind_of(i: int) -> str:
    return KINDS[i % 2]


def _header(head: bytes, name: bytes) -> bytes:
    at = head.lower().find(b"\r\n" + name + b":")
    if at < 0:
        return b""
    start = at + len(name) + 3
    end = head.find(b"\r\n", start)
    return head[start : end if end >= 0 else len(head)].strip()


class Pollers:
    """`clients` keep-alive connections polling one path at `hz` each, staggered evenly, in one
    thread on epoll: a request is written when due (skipped while one is in flight, as a client
    with a timer and one connection would), its response parsed as bytes arrive. Every other client
    honours the ETag (sends `If-None-Match` with the last one it got: a 304 while nothing changed).
    No event loop, task or timer object a poll: about a send, a recv and a share of an epoll
    wake-up, so that the load generator, which shares the job's cores here and has its own machine
    in production, takes as little of them as it can. `lat` by kind of client, `not_modified` the
    304s, `errors` every other status than 200 and 304."""

    def __init__(self, port: int, path: str, clients: int, hz: float) -> None:
        self.path = path
        self.period, self.n = 1.0 / hz, clients
        self.lat: dict[str, list[float]] = {k: [] for k in KINDS}
        self.not_modified = 0
        self.errors: list[int] = []
        self.cpu_s = 0.0  # counted in the bench's own process time
        self.socks = []
        for _ in range(clients):
            s = socket.create_connection((HOST, port))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            self.socks.append(s)

    def run(self, stop: threading.Event) -> None:
        import select

        ep = select.epoll()
        by_fd = {s.fileno(): i for i, s in enumerate(self.socks)}
        for fd in by_fd:
            ep.register(fd, select.EPOLLIN)
        plain = _get(self.path)
        etags = [b""] * self.n
        kinds = [kind_of(i) for i in range(self.n)]
        sent: list[Optional[float]] = [None] * self.n
        bufs = [b""] * self.n
        step = self.period / self.n
        due, k = time.perf_counter(), 0
        try:
            while not stop.is_set():
                now = time.perf_counter()
                while due <= now:  # every poll now due, round robin
                    if sent[k] is None:
                        sent[k] = now
                        self.socks[k].send(_get(self.path, etags[k]) if kinds[k] == "etag" else plain)
                    k = (k + 1) % self.n
                    due += step
                for fd, _ in ep.poll(min(max(due - time.perf_counter(), 0.0), 0.1)):
                    i = by_fd[fd]
                    data = self.socks[i].recv(65536)
                    if not data:
                        raise ConnectionError("the server closed a polling connection")
                    buf = bufs[i] + data
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        bufs[i] = buf
                        continue
                    length = int(_header(buf[:end], b"content-length") or 0)
                    if len(buf) < end + 4 + length:
                        bufs[i] = buf
                        continue
                    bufs[i] = buf[end + 4 + length :]
                    if sent[i] is not None:
                        self.lat[kinds[i]].append(time.perf_counter() - sent[i])
                    sent[i] = None
                    status = int(buf[9:12])
                    if status == 304:
                        self.not_modified += 1
                    elif status != 200:
                        self.errors.append(status)
                    if kinds[i] == "etag":
                        etags[i] = _header(buf[:end], b"etag") or etags[i]
        finally:
            ep.close()
            for s in self.socks:
                s.close()


async def _polling(port: int, path: str, clients: int, hz: float, wrk_dir: Optional[Path] = None):
    """Pollers running in a thread (or wrk, given a folder for its script); returns `done`, which
    stops them and gives them back (or raises what stopped them early: a bench whose clients failed
    measures nothing)."""
    if wrk_dir is not None:
        wrk = WrkPollers(port, path, clients, hz, wrk_dir)

        async def stop_wrk() -> WrkPollers:
            return await asyncio.get_running_loop().run_in_executor(None, wrk.stop)

        return stop_wrk
    pollers = await asyncio.get_running_loop().run_in_executor(None, Pollers, port, path, clients, hz)
    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            pollers.run(stop)
        except BaseException as e:
            failure.append(e)

    thread = threading.Thread(target=run, name="pollers", daemon=True)
    thread.start()

    async def done() -> Pollers:
        stop.set()
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
        if failure:
            raise failure[0]
        return pollers

    return done


# ---- the same clients from wrk (C), a diagnostic --------------------------------------------------
WRK_SCRIPT = """-- each connection: one request at a time, the next {lo}-{hi} ms after a response ({hz:g} Hz on average,
-- connections drifting apart); at the end, every latency recorded (microseconds, count) as JSON
math.randomseed(os.time())
delay = function() return math.random({lo}, {hi}) end
{conditional}
done = function(summary, latency, requests)
  local parts, i, last = {{}}, 1, -1
  while i <= latency.max - latency.min + 1 do
    local v, c = latency(i)
    if v == nil or v > latency.max or v <= last then break end
    parts[#parts + 1] = string.format("[%d,%d]", v, c)
    last = v
    i = i + 1
  end
  local e, nm = summary.errors, 0
  for _, t in ipairs(threads) do nm = nm + (t:get("not_modified") or 0) end
  io.write(string.format('{{"requests": %d, "non2xx": %d, "socket_errors": %d, "not_modified": %d, "latency_us": [%s]}}\\n',
    summary.requests, e.status, e.connect + e.read + e.write + e.timeout, nm, table.concat(parts, ",")))
end
"""
WRK_THREADS = """threads = {}
setup = function(thread) table.insert(threads, thread) end
"""
WRK_CONDITIONAL = """-- the ETag honoured: If-None-Match with the last one received (a 304 while nothing changed)
etag, not_modified = nil, 0
request = function()
  if etag then return wrk.format(nil, nil, {["If-None-Match"] = etag}) end
  return wrk.format()
end
response = function(status, headers, body)
  if status == 304 then not_modified = not_modified + 1 end
  etag = headers["etag"] or headers["ETag"] or etag
end
"""


def wrk_binary() -> Optional[str]:
    return shutil.which("wrk")


class WrkPollers:
    """The same load as `Pollers` from a C load generator: two wrk processes of one thread each,
    one for the plain clients, one for those honouring the ETag, each connection waiting a uniform
    0.5-1.5 periods after a response. Stopped with SIGINT (wrk then reports); `lat`, `not_modified`,
    `errors` as Pollers', and `cpu_s` (wrk's own, from wait4)."""

    def __init__(self, port: int, path: str, clients: int, hz: float, script_dir: Path) -> None:
        binary = wrk_binary()
        if binary is None:
            raise RuntimeError("--load-generator wrk needs wrk (Debian: apt-get install wrk)")
        mean_ms = 1000.0 / hz
        self.lat: dict[str, list[float]] = {k: [] for k in KINDS}
        self.not_modified = 0
        self.errors: list[int] = []
        self.cpu_s = 0.0
        self.procs: dict[str, subprocess.Popen] = {}
        for kind in KINDS:
            n = sum(1 for i in range(clients) if kind_of(i) == kind)
            if not n:
                continue
            script = script_dir / f"poll-{kind}.lua"
            script.write_text(
                WRK_THREADS
                + WRK_SCRIPT.format(
                    lo=round(mean_ms / 2),
                    hi=round(mean_ms * 1.5),
                    hz=hz,
                    conditional=WRK_CONDITIONAL if kind == "etag" else "",
                )
            )
            self.procs[kind] = subprocess.Popen(
                [
                    binary,
                    "-t1",
                    f"-c{n}",
                    "-d3600s",
                    "--timeout",
                    "10s",
                    "-s",
                    str(script),
                    f"http://{HOST}:{port}{path}",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )

    def stop(self) -> "WrkPollers":
        for proc in self.procs.values():
            proc.send_signal(signal.SIGINT)
        for kind, proc in self.procs.items():
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            self.cpu_s += usage.ru_utime + usage.ru_stime
            out = proc.stdout.read().decode() if proc.stdout else ""
            report = next((json.loads(line) for line in out.splitlines() if line.startswith("{")), None)
            if report is None:
                raise RuntimeError(f"wrk reported nothing (exit {proc.returncode}): {out[-400:]}")
            for us, count in report["latency_us"]:
                self.lat[kind] += [us / 1e6] * count
            self.not_modified += report["not_modified"]
            self.errors += [0] * (report["non2xx"] + report["socket_errors"])
        return self


async def _sse(port: int, job_id: str, events: list[dict]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(_get(f"{API}/jobs/{job_id}/events"))
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    buf = b""
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.startswith(b"data: "):
                events.append(json.loads(line[6:]))
    writer.close()


async def _call(port: int, method: str, path: str, body: Optional[dict] = None) -> tuple[int, dict]:
    reader, writer = await asyncio.open_connection(HOST, port)
    data = json.dumps(body).encode() if body is not None else b""
    raw = (
        f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode() + data
    status, out = await _request(reader, writer, raw)
    writer.close()
    return status, json.loads(out) if out else {}


# ---- the floor: a static responder in C ------------------------------------------------------
NGINX_CONF = """master_process off;
daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 256; use epoll; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path {root}/body;
  proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fastcgi;
  uwsgi_temp_path {root}/uwsgi;
  scgi_temp_path {root}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location = /status {{ root {root}/www; try_files /status.json =404; default_type application/json; }}
  }}
}}
"""


def nginx_binary() -> Optional[str]:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


class StaticResponder:
    """nginx, one process, serving `GET /status` from `root/www/status.json` on 127.0.0.1:port."""

    def __init__(self, root: Path) -> None:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("--floor needs nginx (Debian: apt-get install nginx-light)")
        self.root, self.port = root, _free_port()
        (root / "www").mkdir(parents=True, exist_ok=True)
        self.body_file = root / "www" / "status.json"
        self.body_file.write_bytes(b"{}")
        conf = root / "nginx.conf"
        conf.write_text(NGINX_CONF.format(root=root, port=self.port))
        self.proc = subprocess.Popen(
            [binary, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"nginx did not start: {self.proc.stderr.read()[-400:] if self.proc.stderr else ''}"
                    ) from None
                time.sleep(0.1)

    def serve(self, body: bytes) -> None:
        tmp = self.body_file.with_suffix(".tmp")
        tmp.write_bytes(body)
        os.replace(tmp, self.body_file)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---- one job --------------------------------------------------------------------------------------
async def _one_job(
    port: int,
    docs: Path,
    kb: str,
    clients: int,
    hz: float,
    poll_at: Optional[tuple[int, str]] = None,
    wrk_dir: Optional[Path] = None,
) -> dict:
    status, body = await _call(port, "POST", f"{API}/kb/{kb}/jobs", {"sources": [str(docs)]})
    if status != 202:
        raise RuntimeError(f"starting the job: HTTP {status}: {body}")
    job_id = body["job_id"]
    events: list[dict] = []
    poll_port, poll_path = poll_at or (port, f"{API}/kb/{kb}/status")
    polling = await _polling(poll_port, poll_path, clients, hz, wrk_dir) if clients else None
    sse = asyncio.create_task(_sse(port, job_id, events)) if clients else None
    deadline = time.monotonic() + JOB_TIMEOUT_S
    final: dict = {}
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        _, info = await _call(port, "GET", f"{API}/jobs/{job_id}")
        final = info["status"]
        if final["status"] not in ("pending", "running"):
            break
    pollers = await polling() if polling is not None else None
    if sse is not None:
        try:
            await asyncio.wait_for(sse, 10)
        except asyncio.TimeoutError:
            sse.cancel()
    if final.get("status") != "completed":
        raise RuntimeError(f"job {job_id} ended {final.get('status')}: {final.get('message')}")
    from datetime import datetime

    wall = (datetime.fromisoformat(final["completed_at"]) - datetime.fromisoformat(final["started_at"])).total_seconds()
    chunks = int(final["metrics"].get("chunks_indexed") or 0)
    return {
        "job_id": job_id,
        "clients": clients,
        "wall": wall,
        "chunks": chunks,
        "rate": chunks / wall,
        "lat": pollers.lat if pollers is not None else {k: [] for k in KINDS},
        "not_modified": pollers.not_modified if pollers is not None else 0,
        "errors": pollers.errors if pollers is not None else [],
        "wrk_cpu_s": pollers.cpu_s if pollers is not None else 0.0,  # a child's: not in the bench's process_time
        "sse_events": len(events),
        "load_avg": os.getloadavg()[0],
        "sse_final": events[-1]["status"] if events else None,
    }


async def _idle_polls(
    port: int, kb: str, clients: int, hz: float, wrk_dir: Optional[Path] = None, seconds: float = 5.0
) -> dict[str, list[float]]:
    """The same clients for a few seconds with no job running: the machine's share of the latency."""
    polling = await _polling(port, f"{API}/kb/{kb}/status", clients, hz, wrk_dir)
    await asyncio.sleep(seconds)
    return (await polling()).lat


def _run(coro):
    """The SSE client and the job's own calls on uvloop (a kbingest dependency where it builds): the
    load generator shares the 2 cores with the job it measures."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc: Linux, where these figures are taken)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _pct(xs: list[float], q: float) -> Optional[float]:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def _ms(xs: list[float], q: float) -> float:
    return (_pct(xs, q) or 0.0) * 1e3


class _Server:
    """`kbingest serve` on 127.0.0.1, a free port, its own home, its default settings (the rate limit
    too); stopped with SIGTERM."""

    def __init__(self, home: Path, docs: Path) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kbingest",
                "--home",
                str(home),
                "serve",
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--allow-root",
                str(docs),
            ],
            cwd=str(REPO),
            env=bench_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://{HOST}:{self.port}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read()[-600:] if self.proc.stderr else ""
                raise RuntimeError(f"kbingest serve did not start: {err}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def place_load_generator(nice: int, cpu: Optional[int]) -> str:
    """This process (the load generator: its threads and wrk inherit it) niced and/or pinned to one CPU,
    once the server has started (which keeps its priority and every CPU): said in the output."""
    if nice:
        os.nice(nice)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})  # what `taskset -p -c CPU` does
    where = f"pinned to CPU {cpu} (sched_setaffinity, as taskset)" if cpu is not None else "on every CPU"
    return f"nice {nice}, {where}"


def _summary(runs: list[dict], bare: list[dict]) -> dict:
    """One mode's figures: latencies by kind of poller and all, throughput ratios to the bare jobs."""
    lat = {k: [x for r in runs for x in r["lat"][k]] for k in KINDS}
    every = lat["plain"] + lat["etag"]
    ratios = [a["rate"] / b["rate"] for a, b in zip(runs, bare)]
    return {
        "polls": len(every),
        "polls_by_kind": {k: len(v) for k, v in lat.items()},
        "not_modified": sum(r["not_modified"] for r in runs),
        "errors": sum(len(r["errors"]) for r in runs),
        "p50_ms": _ms(every, 0.5),
        "p99_ms": _ms(every, 0.99),
        "max_ms": max(every, default=0.0) * 1e3,
        "p50_ms_by_kind": {k: _ms(v, 0.5) for k, v in lat.items()},
        "p99_ms_by_kind": {k: _ms(v, 0.99) for k, v in lat.items()},
        "p99_per_run_ms": [_ms(r["lat"]["plain"] + r["lat"]["etag"], 0.99) for r in runs],
        "rates": [r["rate"] for r in runs],
        "ratios": ratios,
        "ratio_median": median(ratios) if ratios else None,
        "sse_events": [r["sse_events"] for r in runs],
        "sse_final": [r["sse_final"] for r in runs],
        "server_cpu_s": [r["server_cpu_s"] for r in runs],
        "client_cpu_s": [r["client_cpu_s"] for r in runs],
        "nginx_cpu_s": [r["responder_cpu_s"] for r in runs],
    }


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve_load")
    p.add_argument("--pages", type=int, default=16)
    p.add_argument("--reps", type=int, default=2, help="pairs (without clients, with clients), alternating")
    p.add_argument("--clients", type=int, default=50, help="polling clients: half plain, half honouring the ETag")
    p.add_argument("--hz", type=float, default=10.0)
    p.add_argument(
        "--client-nice",
        type=int,
        default=10,
        metavar="N",
        help="the load generator's nice value once the server runs (default 10: below the job; 0 is the job's "
        "priority; 19 leaves the job the CPU the clients would take, and their latency is then "
        "their own scheduling's)",
    )
    p.add_argument(
        "--pin-cpu",
        type=int,
        default=None,
        metavar="N",
        help="pin the load generator to CPU N (as `taskset -c N`), the server keeping every CPU",
    )
    p.add_argument(
        "--floor",
        action="store_true",
        help="a diagnostic: a third job a round, its clients polling the same status bytes served by nginx",
    )
    p.add_argument(
        "--load-generator",
        choices=("pollers", "wrk"),
        default="pollers",
        help="the polling clients: `Pollers` (Python, epoll; the default) or wrk (C), a diagnostic",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="kbingest-serve-load-"))
    docs = _copy_subset(tmp / "docs", args.pages)
    runs: list[dict] = []
    idle: dict[str, list[float]] = {k: [] for k in KINDS}
    responder: Optional[StaticResponder] = None
    server = _Server(tmp / "home", docs)
    try:
        server.wait_ready()
        responder = StaticResponder(tmp / "nginx") if args.floor else None
        wrk_dir = tmp if args.load_generator == "wrk" else None
        import httpx

        placement = place_load_generator(args.client_nice, args.pin_cpu)
        log(f"  the load generator: {placement}; the server: nice 0, every CPU")
        modes = ["bare", "server"] + (["floor"] if responder is not None else [])
        order = []
        for i in range(args.reps):  # A B, B A, A B... (A B C, B C A, C A B...): no mode always goes first
            order += modes[i % len(modes) :] + modes[: i % len(modes)]
        for i, mode in enumerate(order):
            clients = 0 if mode == "bare" else args.clients
            poll_at = (responder.port, "/status") if mode == "floor" and responder is not None else None
            pids = [server.proc.pid] + ([responder.proc.pid] if responder else [])
            cpu0 = [_cpu_s(pid) for pid in pids] + [time.process_time()]
            r = _run(_one_job(server.port, docs, f"load{i}", clients, args.hz, poll_at, wrk_dir))
            r["mode"] = mode
            r["server_cpu_s"] = _cpu_s(server.proc.pid) - cpu0[0]
            r["responder_cpu_s"] = _cpu_s(responder.proc.pid) - cpu0[1] if responder else 0.0
            r["client_cpu_s"] = time.process_time() - cpu0[-1] + r["wrk_cpu_s"]
            runs.append(r)
            if responder is not None:  # the floor's clients get the bytes the server answers
                responder.serve(httpx.get(f"http://{HOST}:{server.port}{API}/kb/load{i}/status", timeout=10).content)
            polls = ""
            if clients:
                polls = (
                    "".join(
                        f", {k} {len(r['lat'][k])} polls p50 {_ms(r['lat'][k], 0.5):.1f} ms p99 {_ms(r['lat'][k], 0.99):.1f} ms"
                        for k in KINDS
                    )
                    + f" ({r['not_modified']} answered 304), {r['sse_events']} SSE events"
                )
            nginx = f", nginx {r['responder_cpu_s']:.2f} s" if mode == "floor" else ""
            log(
                f"  job {i + 1}/{len(order)} ({mode}) with {clients} clients: {r['chunks']} chunks in {r['wall']:.1f} s "
                f"({r['rate']:.1f}/s){polls}; CPU: server (with the job) {r['server_cpu_s']:.1f} s, "
                f"load generator {r['client_cpu_s']:.2f} s{nginx}"
            )
        idle = _run(_idle_polls(server.port, f"load{len(order) - 1}", args.clients, args.hz, wrk_dir))
        log(
            "  no job running: "
            + ", ".join(
                f"{k} {len(v)} polls p50 {_ms(v, 0.5):.1f} ms p99 {_ms(v, 0.99):.1f} ms" for k, v in idle.items()
            )
        )
    finally:
        if responder is not None:
            responder.stop()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    bare = [r for r in runs if r["mode"] == "bare"]
    loaded = _summary([r for r in runs if r["mode"] == "server"], bare)
    floor = _summary([r for r in runs if r["mode"] == "floor"], bare)
    idle_all = idle["plain"] + idle["etag"]
    out = {
        "pages": args.pages,
        "clients": args.clients,
        "clients_by_kind": {k: sum(1 for i in range(args.clients) if kind_of(i) == k) for k in KINDS},
        "hz": args.hz,
        "client_nice": args.client_nice,
        "pin_cpu": args.pin_cpu,
        "placement": placement,
        "load_generator": args.load_generator,
        "server_settings": "defaults (rate limit 50/s per address, loopback peers not counted)",
        "chunks": runs[0]["chunks"],
        "rates_bare": [r["rate"] for r in bare],
        "server_cpu_bare_s": [r["server_cpu_s"] for r in bare],
        "load_avg": [r["load_avg"] for r in runs],
        **loaded,
        "floor": floor if floor["rates"] else None,
        "idle_polls": len(idle_all),
        "idle_p50_ms": _ms(idle_all, 0.5),
        "idle_p99_ms": _ms(idle_all, 0.99),
        "idle_p99_ms_by_kind": {k: _ms(v, 0.99) for k, v in idle.items()},
    }
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
