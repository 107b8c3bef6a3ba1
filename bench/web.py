"""The web figure: what `kbingest serve --web` costs. One browser session's process (its RSS and CPU)
while idle and while a job runs in the server, and the server's job throughput with ten sessions open
against none, in the same run (the real model; jobs alternate between the two). Sessions are opened
by a websocket client that reads every frame, as a browser's page does; the browser's own drawing
happens on the viewer's machine and is not counted."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, Row, bench_env, kbingest_cmd, log
from bench.context import Ctx, embedding_phase, fj

API = "/api/ingestion"
SESSIONS = 10
SAMPLE_S = 10.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    def __init__(self, home: Path, docs: Path) -> None:
        import httpx

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = kbingest_cmd() + ["--home", str(home), "serve", "--port", str(self.port), "--web"]
        cmd += [
            "--web-sessions",
            str(SESSIONS),
            "--allow-root",
            str(docs),
        ]  # default rate limit: loopback is not counted
        self.proc = subprocess.Popen(cmd, cwd=str(REPO), env=bench_env(), stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("kbingest serve --web did not start")
            time.sleep(0.2)

    def sessions(self) -> list[Any]:
        import psutil

        return [p for p in psutil.Process(self.proc.pid).children(recursive=True) if "--server" in p.cmdline()]

    def wait_sessions_ended(self, timeout: float = 60.0) -> None:
        """Until no session's process is left (each ends within seconds of its socket closing)."""
        deadline = time.monotonic() + timeout
        while self.sessions() and time.monotonic() < deadline:
            time.sleep(0.2)

    def job(self, kb: str, docs: Path) -> dict[str, Any]:
        """A job of the real model in the server, to its end: its final status."""
        import httpx

        r = httpx.post(f"{self.url}{API}/kb/{kb}/jobs", json={"sources": [str(docs)]}, timeout=60)
        r.raise_for_status()
        job_id = r.json()["job_id"]
        while True:
            st = httpx.get(f"{self.url}{API}/jobs/{job_id}", timeout=60).json()["status"]
            if st["status"] in ("completed", "failed", "cancelled"):
                if st["status"] != "completed":
                    raise RuntimeError(f"job {job_id} ended {st['status']}: {st.get('message')}")
                return st
            time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _Browsers:
    """`n` websocket sessions on /ui/ws in a thread, each reading every frame until closed."""

    def __init__(self, url: str, n: int) -> None:
        self.url, self.n = url, n
        self.frames = 0
        self.open = 0
        self._stop: Any = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 120
        while self.open < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.open} of {n} web sessions opened")
            time.sleep(0.1)

    async def _one(self) -> None:
        import websockets

        ws_url = self.url.replace("http://", "ws://") + "/ui/ws?width=120&height=40"
        async with websockets.connect(
            ws_url, additional_headers={"Origin": self.url}, open_timeout=60, close_timeout=2
        ) as ws:
            self.open += 1
            while not self._stop.is_set():
                try:
                    await asyncio.wait_for(ws.recv(), 0.5)
                    self.frames += 1
                except asyncio.TimeoutError:
                    continue

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        await asyncio.gather(*(self._one() for _ in range(self.n)))

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)


def _sample(procs: list[Any], seconds: float) -> tuple[float, float]:
    """(CPU, % of one core, over `seconds`; RSS MiB at the end) of the sessions' processes, summed."""
    t0 = [p.cpu_times() for p in procs]
    time.sleep(seconds)
    t1 = [p.cpu_times() for p in procs]
    cpu = sum((b.user + b.system) - (a.user + a.system) for a, b in zip(t0, t1))
    rss = sum(p.memory_info().rss for p in procs) / 2**20
    return 100.0 * cpu / seconds, rss


def fig_web(ctx: Ctx) -> list[Row]:
    """kbingest serve --web: one browser session's cost, and ten sessions' cost to a job's throughput."""
    try:
        import psutil  # noqa: F401
        import textual_serve  # noqa: F401
        import websockets  # noqa: F401
    except ImportError as e:
        return [Row("33.1", "serve --web: one session's cost", status="pending", note=f"not installed: {e}")]
    pages = ctx.pages(16, 6)
    docs = ctx.ws.subset(pages)
    home = ctx.ws.home("web")
    server = _Server(home, docs)
    reps = ctx.reps(2, 1)
    idle_cpu, idle_rss, busy_cpu, busy_rss, ratios, cps = [], [], [], [], [], {0: [], SESSIONS: []}
    load = []
    try:
        # one session: idle, then while a job runs
        one = _Browsers(server.url, 1)
        procs = server.sessions()
        time.sleep(5.0)  # the dashboard has drawn
        c, r = _sample(procs, SAMPLE_S)
        idle_cpu.append(c)
        idle_rss.append(r)
        log(f"  one session, idle: {c:.1f}% of a core, {r:.0f} MiB")
        result: dict[str, Any] = {}
        t = threading.Thread(target=lambda: result.update(st=server.job("web-one", docs)), daemon=True)
        t.start()
        time.sleep(3.0)  # the job is under way (model loaded)
        c, r = _sample(procs, SAMPLE_S)
        busy_cpu.append(c)
        busy_rss.append(r)
        log(f"  one session, a job running: {c:.1f}% of a core, {r:.0f} MiB")
        t.join()
        one.close()
        # throughput: none and ten sessions, alternating
        for rep in range(reps):
            res = {}
            for n in (0, SESSIONS) if rep % 2 == 0 else (SESSIONS, 0):
                server.wait_sessions_ended()  # the last round's processes end as their sockets close
                browsers = _Browsers(server.url, n) if n else None
                try:
                    final = server.job(f"web-{rep}-{n}", docs)
                finally:
                    if browsers is not None:
                        browsers.close()
                chunks, emb_s = embedding_phase(final)
                res[n] = chunks / emb_s
                cps[n].append(res[n])
                load.append(os.getloadavg()[0])
                log(f"  {n} sessions: {chunks} chunks, embedding {emb_s:.1f} s = {res[n]:.2f}/s")
            ratios.append(res[SESSIONS] / res[0])
    finally:
        server.stop()
        ctx.ws.drop(home)
    where = f"{ctx.corpus_label(pages)}, real model; 1-min load average at each job's end {fj(load, '.1f')} (2 cores)"
    return [
        Row(
            "33.1",
            "serve --web: one browser session's process, idle (CPU, % of one core)",
            unit="%",
            values=idle_cpu,
            note=f"RSS {fj(idle_rss, '.0f')} MiB; sampled {SAMPLE_S:g} s after it drew",
        ),
        Row(
            "33.2",
            "serve --web: one browser session's process while a job runs (CPU, % of one core)",
            unit="%",
            values=busy_cpu,
            note=f"RSS {fj(busy_rss, '.0f')} MiB; {where}",
        ),
        Row(
            "33.3",
            f"serve --web: job embedding throughput with {SESSIONS} browser sessions open / with none, same run",
            values=ratios,
            op=">=",
            target=0.8,
            goal=">= 0.8",
            note=f"chunks/s with none {fj(cps[0], '.1f')}, with {SESSIONS} {fj(cps[SESSIONS], '.1f')}; {where}",
        ),
    ]
