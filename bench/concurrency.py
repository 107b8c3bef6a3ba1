"""Two jobs on two knowledge bases at the same time against the same two one after the other.

    python -m bench.concurrency [--pages N] [--reps R] [--no-budget]

Each repetition makes a fresh home and ingests two disjoint sets of N waf pages (the real model,
`kbingest ingest --batch`, one process a job): sequentially (A, then B) and concurrently (A and B
started together, one embedding budget shared: pipeline/job/budget.py). The order of the two
conditions alternates (seq conc conc seq ...). Judged: median concurrent wall / median sequential
wall (goal <= 1.05: running them together costs nothing). `--no-budget` adds a third condition,
concurrent with the budget off (KBINGEST_EMBED_BUDGET=0: both onnxruntime pools on every core),
to show what the budget buys. One Markdown line on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, corpus_root, log


def pages(root: Path, n: int) -> tuple[list[Path], list[Path]]:
    all_pages = sorted(p for p in root.rglob("*.md") if 2_000 <= p.stat().st_size <= 30_000)
    return all_pages[:n], all_pages[n : 2 * n]


def copy(dest: Path, files: list[Path], root: Path) -> Path:
    for f in files:
        out = dest / f.relative_to(root)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, out)
    return dest


def start(home: Path, src: Path, kb: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kbingest", "--home", str(home), "ingest", str(src), "--kb", kb, "--batch"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(REPO),
    )


def finish(p: subprocess.Popen) -> None:
    _, err = p.communicate(timeout=1800)
    if p.returncode != 0:
        raise SystemExit(f"ingest failed ({p.returncode}): {err[-500:]}")


def run(cond: str, tmp: Path, a: Path, b: Path, rep: int) -> float:
    home = tmp / f"home-{cond}-{rep}"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if cond == "conc-nobudget":
        env["KBINGEST_EMBED_BUDGET"] = "0"
    t0 = time.monotonic()
    if cond == "seq":
        finish(start(home, a, "a", env))
        finish(start(home, b, "b", env))
    else:
        pa, pb = start(home, a, "a", env), start(home, b, "b", env)
        finish(pa)
        finish(pb)
    wall = time.monotonic() - t0
    shutil.rmtree(home, ignore_errors=True)
    log(f"  {cond} rep {rep}: {wall:.1f} s")
    return wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.concurrency", description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=8, help="waf pages per job (default 8)")
    ap.add_argument("--reps", type=int, default=2, help="repetitions of each condition (default 2)")
    ap.add_argument("--no-budget", action="store_true", help="also run concurrently with the budget off")
    args = ap.parse_args(argv)
    root = corpus_root()
    tmp = Path(tempfile.mkdtemp(prefix="kbingest-conc-bench-"))
    try:
        pa, pb = pages(root, args.pages)
        a, b = copy(tmp / "a", pa, root), copy(tmp / "b", pb, root)
        conds = ["seq", "conc"] + (["conc-nobudget"] if args.no_budget else [])
        walls: dict[str, list[float]] = {c: [] for c in conds}
        for rep in range(args.reps):
            order = conds if rep % 2 == 0 else list(reversed(conds))
            for c in order:
                walls[c].append(run(c, tmp, a, b, rep))
        med = {c: statistics.median(w) for c, w in walls.items()}
        ratio = med["conc"] / med["seq"]
        extra = ""
        if args.no_budget:
            extra = (
                f"; budget off: {med['conc-nobudget']:.1f} s ({med['conc-nobudget'] / med['seq']:.3f} x), "
                f"runs {', '.join(f'{x:.1f}' for x in walls['conc-nobudget'])}"
            )
        print(
            f"| two jobs on two knowledge bases, concurrent / sequential wall ({args.pages}+{args.pages} pages, "
            f"real model, {args.reps} reps) | **{ratio:.3f} x** (goal <= 1.05) | sequential "
            f"{', '.join(f'{x:.1f}' for x in walls['seq'])} s, concurrent "
            f"{', '.join(f'{x:.1f}' for x in walls['conc'])} s{extra} |",
            flush=True,
        )
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
