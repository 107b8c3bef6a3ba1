"""What every figure shares: the context of a suite run, and runs of a batch ingest that several take."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from bench.common import REPO, Book, Row, Workspace, bench_env, log, phase, run_ingest

GIB_MIB = 1024.0


def fj(xs, spec: str) -> str:
    """Values joined for a note: fj([1.234, 5.6], '.1f') -> '1.2, 5.6'."""
    return ", ".join(format(x, spec) for x in xs)


@dataclass
class Ctx:
    ws: Workspace
    book: Book
    quick: bool = False
    reps_opt: Optional[int] = None
    pages_opt: Optional[int] = None
    shared: dict[str, Any] = field(default_factory=dict)

    def reps(self, full: int, quick: int) -> int:
        return self.reps_opt or (quick if self.quick else full)

    def pages(self, full: Optional[int], quick: Optional[int]) -> Optional[int]:
        """Pages of the corpus to use (None = all 199). --pages caps every figure."""
        n = quick if self.quick else full
        if self.pages_opt:
            n = self.pages_opt if n is None else min(n, self.pages_opt)
        return n

    def corpus_label(self, n: Optional[int]) -> str:
        k = self.ws.n_pages(n)
        return "1x corpus" if k == len(self.ws.all_pages) else f"{k}-page subset"


def check_final(res, what: str, want_rc=(0,)) -> dict[str, Any]:
    final = res.final()
    if res.rc not in want_rc or final is None:
        raise RuntimeError(f"{what}: exit {res.rc}{' (timed out)' if res.timed_out else ''}: {res.stderr_tail()}")
    return final


def embedding_phase(final: dict[str, Any]) -> tuple[int, float]:
    p = phase(final, "embedding")
    return int(p.get("items_processed") or final["metrics"].get("chunks_embedded", 0)), float(
        p.get("duration_seconds") or 0.0
    )


# ---- figure 1 (+ 3a, 4): batch ingest against raw fastembed ----------------------------------


def first_run(ctx: Ctx, docs: Path, tag: str, timeout: float) -> dict[str, Any]:
    home = ctx.ws.home(tag)
    log(f"  batch ingest (real model) of {docs.name} into {home.name}")
    r = run_ingest(ctx.ws, home, [docs], timeout=timeout)
    final = check_final(r, "batch ingest")
    if final.get("status") != "completed":
        raise RuntimeError(f"batch ingest ended {final.get('status')}: {final.get('message')}")
    n, emb_s = embedding_phase(final)
    log(f"    {n} chunks in {r.wall:.1f} s (embedding phase {emb_s:.1f} s), peak RSS {r.maxrss_mib:.0f} MiB")
    return {"home": home, "wall": r.wall, "n": n, "emb_s": emb_s, "rss": r.maxrss_mib, "final": final}


def run_again(ctx: Ctx, run: dict[str, Any], docs: Path, k: int) -> list[dict[str, Any]]:
    out = []
    for i in range(k):
        r = run_ingest(ctx.ws, run["home"], [docs], tag=f"rerun{i}", timeout=600)
        final = check_final(r, "re-run")
        m = final["metrics"]
        out.append(
            {
                "wall": r.wall,
                "ratio": r.wall / run["wall"],
                "embedded": m.get("chunks_embedded", 0),
                "skipped": m.get("documents_skipped", 0),
                "status": final.get("status"),
                "rss": r.maxrss_mib,
            }
        )
        log(
            f"    re-run {i + 1}: {r.wall:.2f} s = {100 * r.wall / run['wall']:.1f}% of the first run, "
            f"{m.get('chunks_embedded', 0)} chunks embedded, {m.get('documents_skipped', 0)} documents skipped"
        )
    return out


def rerun_rows(ctx: Ctx, reruns: list[dict[str, Any]], label: str) -> list[Row]:
    return [
        Row(
            "4.1",
            f"re-run over the unchanged {label}: wall time / first run's",
            unit="%",
            values=[100 * r["ratio"] for r in reruns],
            op="<",
            target=5.0,
            goal="< 5 %",
            note="each first run of figure 1 is re-run in the same home; "
            f"walls {fj([r['wall'] for r in reruns], '.1f')} s",
        ),
        Row("4.2", "re-run: chunks embedded", values=[r["embedded"] for r in reruns], op="<=", target=0, goal="0"),
    ]


# ---- watch mode: save to searchable -----------------------------------------------------------


def json_module(module: str, *args: str) -> dict[str, Any]:
    """`python -m <module> ... --json`: its progress logged, its last stdout line (JSON) returned."""
    r = subprocess.run(
        [sys.executable, "-m", module, *args, "--json"],
        cwd=str(REPO),
        env=bench_env(),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if r.returncode != 0:
        raise RuntimeError(f"{module} exit {r.returncode}: {r.stderr[-600:]}")
    for line in r.stderr.splitlines():
        log("  " + line)
    return json.loads(r.stdout.strip().splitlines()[-1])
