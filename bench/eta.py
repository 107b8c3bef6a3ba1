"""The ETA figure (issue 30): how honest the job's ETA and progress are, on an even folder and on a
skewed one (one document holding about 40 % of the chunks, last in walk order), real model.

A `kbingest ingest --batch` runs as a user runs it; every status line it prints (about one each 0.5 s)
is a sample, stamped when it arrives. The job's length T is from its first line to its last. From
20 % of T on: |eta_seconds - actual remaining| / T (median and worst sample), and |progress -
100 * elapsed / T| in points; every sample's progress (the job's and each phase's) never lower
than the one before.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

from bench.common import OUT_DIR, Row, bench_env, corpus_pages, kbingest_cmd, log, median, perturb
from bench.context import Ctx, fj

FROM_SHARE = 0.2
SKEW_SHARE = 0.4  # of the chunks, in the one big document


def make_skewed(ws_root: Path, even: Path, n_pages: int) -> Path:
    """The even folder under a/, plus zz-big.md (last in walk order): perturbed corpus text of
    SKEW_SHARE / (1 - SKEW_SHARE) times the rest's bytes, so about 40 % of the chunks."""
    dest = ws_root / f"skewed-{n_pages}"
    if dest.exists():
        return dest
    shutil.copytree(even, dest / "a")
    rest = sum(p.stat().st_size for p in (dest / "a").rglob("*") if p.is_file())
    want = int(rest * SKEW_SHARE / (1 - SKEW_SHARE))
    parts: list[str] = []
    got, k = 0, 0
    pages = corpus_pages()
    while got < want:
        p = pages[k % len(pages)]
        text = perturb(p.read_text(encoding="utf-8", errors="replace"), 100 + k, random.Random(f"eta:{k}"))
        text = text.split("\n---\n", 1)[-1] if text.startswith("---") else text  # no front matter mid-document
        parts.append(f"\n\n# Part {k + 1}: {p.stem}\n\n{text}")
        got += len(parts[-1].encode())
        k += 1
    (dest / "zz-big.md").write_text("# One big reference\n" + "".join(parts), encoding="utf-8")
    return dest


def sample_run(home: Path, docs: Path, timeout: float, record: Optional[Path] = None) -> dict[str, Any]:
    """One ingest --batch; each stdout line with its arrival time (monotonic). record: a file to
    write every sample to (JSON lines: time since the first line, ETA, progress, phases)."""
    cmd = kbingest_cmd() + ["--home", str(home), "ingest", str(docs), "--kb", "eta", "--batch"]
    samples: list[tuple[float, dict[str, Any]]] = []
    p = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=bench_env(), start_new_session=True
    )
    t_start = time.monotonic()
    assert p.stdout is not None
    for line in p.stdout:
        if time.monotonic() - t_start > timeout:
            p.kill()
            break
        try:
            samples.append((time.monotonic(), json.loads(line)))
        except ValueError:
            continue
    rc = p.wait()
    if rc != 0 or not samples or samples[-1][1].get("status") != "completed":
        raise RuntimeError(f"ingest of {docs} exited {rc}")
    if record is not None:
        write_samples(record, samples)
    return judge(samples)


def write_samples(path: Path, samples: list[tuple[float, dict[str, Any]]]) -> None:
    """The samples as JSON lines, the actual remaining time beside each ETA: where an error comes from."""
    t0, t1 = samples[0][0], samples[-1][0]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for t, s in samples:
            phases = {
                d["name"]: [d["status"], d["items_processed"], d["items_total"], d.get("rate"), d.get("eta_seconds")]
                for d in s.get("phase_details", [])
            }
            line = {
                "t": round(t - t0, 2),
                "remaining": round(t1 - t, 2),
                "eta": s.get("eta_seconds"),
                "progress": s.get("progress"),
                "status": s.get("status"),
                "phases": phases,  # name: [status, processed, total, rate, eta]
            }
            f.write(json.dumps(line) + "\n")


def judge(samples: list[tuple[float, dict[str, Any]]]) -> dict[str, Any]:
    """The errors of one run's samples (see the module's docstring)."""
    t0, t1 = samples[0][0], samples[-1][0]
    total = max(1e-9, t1 - t0)
    eta_err: list[float] = []
    worst_at: Optional[float] = None
    prog_err: list[float] = []
    unknown = 0
    monotonic = True
    last_job = -1.0
    last_phase: dict[str, int] = {}
    for t, s in samples:
        if s.get("progress", 0) < last_job:
            monotonic = False
        last_job = max(last_job, s.get("progress", 0))
        for d in s.get("phase_details", []):
            if d["progress"] < last_phase.get(d["name"], 0):
                monotonic = False
            last_phase[d["name"]] = max(last_phase.get(d["name"], 0), d["progress"])
        if t - t0 < FROM_SHARE * total or s.get("status") != "running":
            continue
        prog_err.append(abs(s.get("progress", 0) - 100 * (t - t0) / total))
        eta = s.get("eta_seconds")
        if eta is None:
            unknown += 1
            continue
        eta_err.append(abs(eta - (t1 - t)) / total)
        if eta_err[-1] == max(eta_err):
            worst_at = (t - t0) / total
    final = samples[-1][1]
    return {
        "total_s": total,
        "samples": len(samples),
        "judged": len(prog_err),
        "eta_unknown": unknown,
        "eta_err_median": median(eta_err),
        "eta_err_worst": max(eta_err) if eta_err else None,
        "worst_at": worst_at,
        "progress_err_median": median(prog_err),
        "monotonic": monotonic,
        "chunks": (final.get("metrics") or {}).get("chunks_created"),
    }


def _load() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def _rows(ctx: Ctx, name: str, rs: list[dict[str, Any]], n_pages: Optional[int], load_note: str) -> list[Row]:
    """The four rows of one folder: ETA error median and worst, progress error, monotonic."""
    what = (
        "even folder" if name == "even" else "skewed folder (one document of ~40 % of the chunks, last in walk order)"
    )
    label = f"{ctx.corpus_label(n_pages)}{'' if name == 'even' else ' + the big document'}"
    note = (
        f"|eta_seconds - actual remaining| / job time T; real model, {label}; T {fj([x['total_s'] for x in rs], '.1f')} s; "
        f"{fj([x['chunks'] or 0 for x in rs], 'd')} chunks; worst at {[x['worst_at'] for x in rs]} of T; samples "
        f"with no ETA yet: {[x['eta_unknown'] for x in rs]}; samples in bench/out/eta-{name}-*.jsonl; {load_note}"
    )
    on = "sample from 20 % of the job on"
    specs = [  # key, figure, unit, result, op, target, goal
        ("median", f"job ETA error, median {on}", "share of T", "eta_err_median", "<=", 0.15, "<= 0.15"),
        ("worst", f"job ETA error, worst {on}", "share of T", "eta_err_worst", "<=", 0.30, "<= 0.30"),
        ("progress", f"job progress vs elapsed / T, median {on}", "points", "progress_err_median", "<=", 15.0, "<= 15"),
        (
            "monotonic",
            "progress (job and each phase) never went back",
            "1 = yes",
            "monotonic",
            ">=",
            1.0,
            "every sample",
        ),
    ]
    return [
        Row(
            f"eta.{name}.{key}",
            f"{figure}, {what}",
            unit=unit,
            values=[None if x[result] is None else float(x[result]) for x in rs],  # monotonic: 1.0 or 0.0
            op=op,
            target=target,
            goal=goal,
            note=note if key == "median" else "",
        )
        for key, figure, unit, result, op, target, goal in specs
    ]


def fig_eta(ctx: Ctx) -> list[Row]:
    n_pages = ctx.pages(60, 24)
    reps = ctx.reps(2, 1)
    even = ctx.ws.subset(n_pages)
    skewed = make_skewed(ctx.ws.root, even, ctx.ws.n_pages(n_pages))
    runs: dict[str, list[dict[str, Any]]] = {"even": [], "skewed": []}
    loads = [_load()]
    for r in range(reps):
        for name, docs in (("even", even), ("skewed", skewed)):
            home = ctx.ws.home(f"eta-{name}")
            log(f"figure eta ({name}, run {r + 1}/{reps}): ingest --batch of {docs.name}, real model, load {_load()}")
            res = sample_run(home, docs, timeout=3600, record=OUT_DIR / f"eta-{name}-{r + 1}.jsonl")
            log(
                f"  {res['total_s']:.1f} s, {res['chunks']} chunks, {res['samples']} samples: ETA error median "
                f"{res['eta_err_median']}, worst {res['eta_err_worst']} (at {res['worst_at']} of T), progress error median "
                f"{res['progress_err_median']}, unknown ETAs {res['eta_unknown']}, monotonic {res['monotonic']}"
            )
            runs[name].append(res)
            ctx.ws.drop(home)
            loads.append(_load())
    load_note = f"1-minute load average during the runs: {', '.join(loads)} (2 cores; above ~2 is provisional)"
    return [row for name, rs in runs.items() for row in _rows(ctx, name, rs, n_pages, load_note)]
