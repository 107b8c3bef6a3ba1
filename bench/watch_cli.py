"""Watch latency as a user meets it (issue 12): `kbingest ingest --watch` runs in its own process;
after each save, `kbingest search` is run again and again, each time a fresh process, until the new
sentence is among its top 3 hits. The time from the save to that answer is the figure.

    python -m bench.watch_cli [--pages 4] [--runs 5] [--json]

The watch process answers those searches warm (pipeline/kb/resident.py); a search that finds no
resident process would start cold. Also measured, in the same run: a fresh-process search of a
sentence already indexed (what each poll costs), and `python -c pass`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import REPO, bench_env, corpus_root, log
from bench.watch_latency import pick_pages, sentence_for

TIMEOUT_S = 60.0


class WatchProcess:
    """`kbingest ingest --watch --batch`, its JSON lines read as they come."""

    def __init__(self, home: Path, folder: Path) -> None:
        self.p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kbingest",
                "--home",
                str(home),
                "ingest",
                str(folder),
                "--kb",
                "watchbench",
                "--batch",
                "--watch",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=str(REPO),
            env=bench_env(),
        )
        self.last: dict = {}
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        for line in self.p.stdout:
            try:
                self.last = json.loads(line)
            except ValueError:
                pass

    def wait_watching(self, timeout: float, after: float = 0.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise SystemExit(f"the watch process exited {self.p.returncode}")
            if str(self.last.get("message", "")).startswith("watching") and time.monotonic() >= after:
                return
            time.sleep(0.05)
        raise SystemExit("the watch process did not get to watching in time")

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(60)
            except subprocess.TimeoutExpired:
                self.p.kill()


def search(home: Path, query: str) -> tuple[list[dict], float]:
    t0 = time.perf_counter()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kbingest",
            "--home",
            str(home),
            "search",
            "--kb",
            "watchbench",
            query,
            "-k",
            "3",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=str(REPO),
        env=bench_env(),
        timeout=120,
    )
    took = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"kbingest search exited {r.returncode}: {r.stderr[-400:]}")
    return json.loads(r.stdout), took


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.watch_cli", description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=4)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="kbingest-watch-cli-"))
    watch = None
    try:
        folder = tmp / "docs"
        folder.mkdir()
        pages = pick_pages(corpus_root(), args.pages)
        for p in pages:
            shutil.copyfile(p, folder / p.name)
        home = tmp / "home"
        watch = WatchProcess(home, folder)
        watch.wait_watching(600)
        log(f"watching {len(pages)} pages in process {watch.p.pid}")
        warm = [search(home, "reliability targets")[1] for _ in range(3)]  # what a poll costs, warm answers
        bare = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], env=bench_env(), check=True)
            bare.append(time.perf_counter() - t0)
        latencies, polls = [], []
        for i in range(args.runs):
            page = folder / pages[i % len(pages)].name
            sentence = sentence_for(i)
            with open(page, "a", encoding="utf-8") as fh:
                fh.write(f"\n\n## Watch probe {i + 1}\n\n{sentence}\n")
            saved = time.monotonic()
            n = 0
            while True:
                hits, _ = search(home, sentence)
                n += 1
                if any(sentence in h["text"] for h in hits):
                    latencies.append(time.monotonic() - saved)
                    break
                if time.monotonic() - saved > TIMEOUT_S:
                    raise SystemExit(f"run {i + 1}: not found within {TIMEOUT_S:.0f} s")
            polls.append(n)
            log(
                f"run {i + 1}: {page.name}: found by a fresh `kbingest search` after {latencies[-1]:.2f} s ({n} searches)"
            )
            watch.wait_watching(60, after=time.monotonic() + 0.5)
            time.sleep(1.0)
        out = {"latencies": latencies, "polls": polls, "search_s": warm, "python_s": bare, "pages": len(pages)}
        if args.json:
            print(json.dumps(out), flush=True)
        else:
            print(
                f"watch, save to found by a fresh `kbingest search`: median {statistics.median(latencies):.2f} s "
                f"({', '.join(f'{x:.2f}' for x in latencies)}); a warm search {statistics.median(warm):.2f} s, "
                f"python -c pass {statistics.median(bare):.3f} s"
            )
        return 0
    finally:
        if watch is not None:
            watch.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
