"""Profiling one in-process batch ingest: pyinstrument on the main thread (start-up: imports, model
load, opening the table, then the wait for the workers) and a stack sampler over every thread
(pyinstrument follows one thread only; the engine's work happens in four worker threads).

Native code (onnxruntime, LanceDB, the tokenizers) shows as the Python frame that called it.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import OUT_DIR, Row, bench_env, log, run_inproc
from bench.context import Ctx, embedding_phase
from bench.dashboard import dashboard_importable, run_dashboard_pty

REPO = Path(__file__).resolve().parents[1]


class StackSampler:
    """Samples sys._current_frames() every `interval` seconds, per thread name."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.leaf: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.total: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.samples: collections.Counter = collections.Counter()
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)

    def start(self) -> None:
        self._th.start()

    def stop(self) -> None:
        self._stop.set()
        self._th.join()

    @staticmethod
    def _label(frame) -> str:
        co = frame.f_code
        fn = co.co_filename
        for marker in ("site-packages/", str(REPO) + "/", "lib/python3"):
            i = fn.find(marker)
            if i >= 0:
                fn = fn[i + len(marker) :]
                break
        return f"{fn}:{co.co_name}"

    def _loop(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            for tid, frame in sys._current_frames().items():
                if tid == me:
                    continue
                name = names.get(tid, str(tid))
                name = name.split("-")[0] + "-" + name.split("-")[1] if name.startswith("kbingest-") else name
                self.samples[name] += 1
                self.leaf[name][self._label(frame)] += 1
                seen = set()
                f = frame
                while f is not None:
                    lab = self._label(f)
                    if lab not in seen:
                        seen.add(lab)
                        self.total[name][lab] += 1
                    f = f.f_back

    def report(self, top: int = 12) -> str:
        out = []
        for name, n in self.samples.most_common():
            out.append(f"== thread {name}: {n} samples ({n * self.interval:.1f} s)")
            out.append("   self (innermost Python frame; native time shows here):")
            for lab, c in self.leaf[name].most_common(top):
                out.append(f"     {100 * c / n:5.1f}%  {lab}")
            out.append("   inclusive (pipeline/ and app/ frames):")
            inc = [(lab, c) for lab, c in self.total[name].most_common() if lab.startswith(("pipeline/", "app/"))]
            for lab, c in inc[:top]:
                out.append(f"     {100 * c / n:5.1f}%  {lab}")
        return "\n".join(out)

    def summary(self, top: int = 5) -> dict[str, Any]:
        return {
            name: {"samples": n, "self": [(lab, round(100 * c / n, 1)) for lab, c in self.leaf[name].most_common(top)]}
            for name, n in self.samples.most_common()
        }


def profile_ingest(p: dict[str, Any]) -> dict[str, Any]:
    """Run one job the way `kbingest ingest --batch` does, in this process, profiled."""
    from pyinstrument import Profiler

    out_dir = Path(p.get("out_dir") or OUT_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = p.get("tag", "ingest")
    sampler = StackSampler(p.get("interval", 0.01))
    prof = Profiler(interval=0.002)
    t0 = time.perf_counter()
    sampler.start()
    prof.start()
    marks: list[tuple[str, float]] = []
    from kbingest.pipeline.job.engine import IngestJob  # noqa: E402
    from kbingest.pipeline.jobstore.recovery import open_store  # noqa: E402  (import time is part of the profile)
    from kbingest.pipeline.models import JobConfig
    from kbingest.pipeline.paths import Home

    marks.append(("imports (engine, pydantic, tinydb)", time.perf_counter() - t0))
    home = Home(p["home"]).ensure()
    store = open_store(home)
    cfg = JobConfig(sources=[p["docs"]], kb="profile", embedder=p.get("embedder", "fastembed"), **p.get("config", {}))
    job = IngestJob.create(home, store, cfg)
    marks.append(("job created", time.perf_counter() - t0))
    snap = job.run()
    marks.append(("job.run() returned", time.perf_counter() - t0))
    prof.stop()
    sampler.stop()
    wall = time.perf_counter() - t0
    main_txt = prof.output_text(unicode=False, color=False, show_all=False)
    (out_dir / f"profile_{tag}_main.txt").write_text(main_txt)
    threads_txt = sampler.report()
    (out_dir / f"profile_{tag}_threads.txt").write_text(threads_txt)
    emb = next((d for d in snap.phase_details if d.name == "embedding"), None)
    rerun: dict[str, Any] = {}
    if p.get("rerun", True):
        # the same job again over the unchanged pages (figure 4), in a fresh process state as far as the
        # job is concerned: a new IngestJob, so a new model load, as `kbingest ingest` would do
        prof2 = Profiler(interval=0.001)
        t1 = time.perf_counter()
        prof2.start()
        job2 = IngestJob.create(home, store, cfg)
        snap2 = job2.run()
        prof2.stop()
        rerun = {
            "wall_s": time.perf_counter() - t1,
            "status": snap2.status.value,
            "embedded": snap2.metrics.get("chunks_embedded", 0),
            "top": _pyinstrument_top(prof2, 1e-9, depth=7),
        }
        (out_dir / f"profile_{tag}_rerun_main.txt").write_text(prof2.output_text(unicode=False, color=False))
    return {
        "wall_s": wall,
        "marks": marks,
        "status": snap.status.value,
        "rerun": rerun,
        "chunks": snap.metrics.get("chunks_embedded", 0),
        "embedding_s": emb.duration_seconds if emb else None,
        "threads": sampler.summary(),
        "main_top": _pyinstrument_top(prof, wall),
        "files": [str(out_dir / f"profile_{tag}_main.txt"), str(out_dir / f"profile_{tag}_threads.txt")],
    }


def _pyinstrument_top(prof, wall: float, depth: int = 6) -> list[tuple[str, float]]:
    """The biggest frames of the main thread's profile (time in seconds), a few levels deep."""
    session = prof.last_session
    root = session.root_frame() if session else None
    out: list[tuple[str, float]] = []

    def visit(f, d):
        if f is None or d > depth:
            return
        if f.time >= max(0.02 * wall, 0.05) and d > 0:
            out.append((f"{'  ' * d}{f.function} ({Path(f.file_path_short or '').name}:{f.line_no})", round(f.time, 2)))
        for c in f.children:
            visit(c, d + 1)

    visit(root, 0)
    return out[:40]


# ---- profiling --------------------------------------------------------------------------------


def fig_profile(ctx: Ctx) -> list[Row]:
    n_pages = ctx.pages(20, 4)
    docs = ctx.ws.subset(n_pages)
    home = ctx.ws.home("profile")
    log(f"profile: one in-process batch ingest of {ctx.corpus_label(n_pages)} (pyinstrument + thread sampler)")
    d, _ = run_inproc(ctx.ws, "profile_ingest", {"home": str(home), "docs": str(docs), "tag": "ingest"}, timeout=3600)
    ctx.ws.drop(home)
    lines = [
        f"One in-process ingest of the {ctx.corpus_label(n_pages)} ({d['chunks']} chunks) in "
        f"{d['wall_s']:.1f} s, embedding phase {d['embedding_s']:.1f} s. Full output: "
        + ", ".join(f"`{Path(f).relative_to(REPO)}`" for f in d["files"])
        + ".",
        "",
        "Main thread (pyinstrument, seconds):",
        "",
        "```",
    ]
    lines += [f"{t:7.2f}  {name}" for name, t in d["main_top"][:25]]
    lines += [
        "```",
        "",
        "Worker threads (stack sampler, share of each thread's samples, innermost Python frame):",
        "",
        "```",
    ]
    for name, s in d["threads"].items():
        if name.startswith(("kbingest", "bench-job")):
            lines.append(f"{name}: {s['samples']} samples")
            lines += [f"   {pct:5.1f}%  {lab}" for lab, pct in s["self"]]
    lines.append("```")
    rr = d.get("rerun") or {}
    if rr:
        lines += [
            "",
            f"Re-run of the same pages in the same process (imports already done; a new job loads the model "
            f"again): {rr['wall_s']:.2f} s, {rr['embedded']} chunks embedded, status {rr['status']}. "
            f"Main thread (pyinstrument, seconds; `bench/out/profile_ingest_rerun_main.txt`):",
            "",
            "```",
        ]
        lines += [f"{t:7.2f}  {name}" for name, t in rr["top"][:20]]
        lines.append("```")
    ctx.book.note("Profile of a batch ingest", "\n".join(lines))
    ok, _ = dashboard_importable()
    if ok:
        out = REPO / "bench" / "out" / "profile_dashboard_main.txt"
        session = ctx.ws.root / "dashboard.pyisession"
        home = ctx.ws.home("profile-dash")
        log("profile: the dashboard (pyinstrument on its main thread: the Textual event loop)")
        d = run_dashboard_pty(
            ctx,
            home,
            docs,
            timeout=3600,
            prefix=[sys.executable, "-m", "pyinstrument", "-r", "pyisession", "-o", str(session), "-m", "kbingest"],
        )
        ctx.ws.drop(home)
        st = d["status"] or {}
        n, emb_s = embedding_phase(st) if st else (0, 0.0)
        head = ["(no profile written)"]
        if session.exists():
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pyinstrument",
                    "--load",
                    str(session),
                    "--no-color",
                    "--no-unicode",
                    "-r",
                    "text",
                    "-o",
                    str(out),
                ],
                env=bench_env(),
                timeout=300,
            )
            pst = ctx.ws.root / "dashboard.pstats"
            subprocess.run(
                [sys.executable, "-m", "pyinstrument", "--load", str(session), "-r", "pstats", "-o", str(pst)],
                env=bench_env(),
                timeout=300,
            )
            head = out.read_text().splitlines()[:40] if out.exists() else head
            if pst.exists():
                import io
                import pstats

                buf = io.StringIO()
                pstats.Stats(str(pst), stream=buf).sort_stats("tottime").print_stats(18)
                top = [ln for ln in buf.getvalue().splitlines() if ln.strip()][-19:]
                (REPO / "bench" / "out" / "profile_dashboard_selftime.txt").write_text(buf.getvalue())
                head += ["", "self time, top functions (pstats of the same session):"] + top
        ctx.book.note(
            "Profile of the dashboard",
            f"The dashboard ingesting the same pages under pyinstrument: {n} chunks, embedding phase "
            f"{emb_s:.1f} s, process CPU {d['cpu_s'] or 0:.0f} s over {d['wall']:.0f} s wall. Main thread "
            f"(the UI; the engine's workers are other threads), from `{out.relative_to(REPO)}`:\n\n```\n"
            + "\n".join(head)
            + "\n```",
        )
    return []
