"""Shared pieces of the benchmark suite: the corpus copies, subprocess runs with exact peak RSS,
the machine description and the results book (bench/out/results.json + results.md).

Every figure is a ratio or a paired comparison measured in the same run, over several
repetitions, and the median is what is judged: the machine this was written on is noisy (the
same short run varies 2x), so absolute numbers from different runs are not compared.
"""

from __future__ import annotations

import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "bench" / "out"
DEFAULT_CORPUS = REPO / "tests" / "data" / "waf" / "well-architected"  # shipped, CC-BY-4.0
CORPUS_ENV = "KBINGEST_BENCH_CORPUS"
MIB = 1024 * 1024


def corpus_root() -> Path:
    env = os.environ.get(CORPUS_ENV)
    if env:
        return Path(env)
    return DEFAULT_CORPUS


def log(msg: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def median(xs: Sequence[float]) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ---- the machine ------------------------------------------------------------------------------


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    ram_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": ram_gib,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "onnxruntime": _version("onnxruntime"),
        "fastembed": _version("fastembed"),
        "lancedb": _version("lancedb"),
        "tokenizers": _version("tokenizers"),
        "langchain-text-splitters": _version("langchain-text-splitters"),
        "chonkie": _version("chonkie"),
        "textual": _version("textual"),
        "loadavg_at_start": [round(x, 2) for x in load] if load else None,
    }


# ---- results ----------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the results table. `op`/`target` make it a goal; without them it is information."""

    key: str  # stable id, e.g. "1.e2e_ratio"
    figure: str  # what is measured, for people
    unit: str = ""
    values: list[float] = field(default_factory=list)  # every repetition
    op: Optional[str] = None  # ">=", "<=", "<", ">" or None (information only)
    target: Optional[float] = None
    goal: str = ""  # the goal as written for people
    note: str = ""
    status: str = ""  # pass | fail | info | pending | error (set by finish())
    measured: Optional[float] = None
    measured_at: str = ""

    def finish(self) -> "Row":
        self.measured_at = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        if self.status in ("pending", "error"):
            return self
        self.measured = median(self.values)
        if self.op is None or self.target is None:
            self.status = "info"
        elif self.measured is None:
            self.status = "error"
        else:
            ok = {
                ">=": self.measured >= self.target,
                "<=": self.measured <= self.target,
                "<": self.measured < self.target,
                ">": self.measured > self.target,
            }[self.op]
            self.status = "pass" if ok else "fail"
        return self


GOAL = re.compile(r"(>=|<=|<|>|=)\s*(-?[0-9.]+)")
T = TypeVar("T")


def goal_row(key: str, figure: str, values: Sequence[float], goal: str, note: str = "", unit: str = "") -> Row:
    """A Row whose goal is written once, as people read it, and read from there: "<op> <target>[ rest]"
    (">= 0.8", "< 5 s", "<= 1.10 (reference)"); "= 0", of a figure that cannot go below 0, is "<= 0"."""
    m = GOAL.match(goal)
    if m is None:
        raise ValueError(f"{key}: goal {goal!r} does not start with an operator and a number")
    op = "<=" if m.group(1) == "=" else m.group(1)
    return Row(key, figure, unit=unit, values=list(values), op=op, target=float(m.group(2)), goal=goal, note=note)


def alternating(reps: int, sample: Callable[[str], T], sides: tuple[str, str] = ("1x", "10x")) -> list[dict[str, T]]:
    """`reps` pairs of samples, one of each side, the order alternating between repetitions (1x then
    10x, then 10x then 1x...), so that a drift in the machine's load falls on both sides alike."""
    pairs = []
    for rep in range(reps):
        order = sides if rep % 2 == 0 else sides[::-1]
        pairs.append({side: sample(side) for side in order})
    return pairs


def _fmt(x: Optional[float]) -> str:
    if x is None:
        return "–"
    ax = abs(x)
    if ax >= 100:
        return f"{x:,.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 0.1:
        return f"{x:.3f}"
    return f"{x:.4f}"


class Book:
    """Results of this run merged over earlier ones (a `--only` run replaces only its rows)."""

    def __init__(self, out_dir: Path = OUT_DIR) -> None:
        self.out_dir = out_dir
        self.json_file = out_dir / "results.json"
        self.md_file = out_dir / "results.md"
        self.rows: dict[str, dict[str, Any]] = {}
        self.machine: dict[str, Any] = {}
        self.runs: list[dict[str, Any]] = []
        self.notes: dict[str, str] = {}
        if self.json_file.exists():
            try:
                data = json.loads(self.json_file.read_text())
                self.rows = {r["key"]: r for r in data.get("rows", [])}
                self.machine = data.get("machine", {})
                self.runs = data.get("runs", [])
                self.notes = data.get("notes", {})
            except (ValueError, KeyError):
                pass

    def start_run(self, machine: dict[str, Any], argv: list[str]) -> None:
        self.machine = machine
        self.runs = (self.runs + [{"date": machine["date"], "argv": argv}])[-10:]

    def add(self, rows: list[Row]) -> None:
        for r in rows:
            self.rows[r.key] = asdict(r.finish())
        self.save()

    def note(self, key: str, text: str) -> None:
        self.notes[key] = text
        self.save()

    def save(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        ordered = sorted(self.rows.values(), key=lambda r: _sort_key(r["key"]))
        self.json_file.write_text(
            json.dumps({"machine": self.machine, "runs": self.runs, "rows": ordered, "notes": self.notes}, indent=1)
        )
        self.md_file.write_text(self.markdown())

    def markdown(self) -> str:
        m = self.machine
        lines = ["# kbingest benchmark results", ""]
        if m:
            lines += [
                f"Measured {m.get('date')} on {m.get('cpu')}, {m.get('cores')} cores, "
                f"{m.get('ram_gib')} GiB RAM, {m.get('os')}; Python {m.get('python')}, "
                f"onnxruntime {m.get('onnxruntime')}, fastembed {m.get('fastembed')}, "
                f"lancedb {m.get('lancedb')}, tokenizers {m.get('tokenizers')}, "
                f"langchain-text-splitters {m.get('langchain-text-splitters')}, chonkie {m.get('chonkie')}, "
                f"textual {m.get('textual')}. Load average at start: {m.get('loadavg_at_start')}.",
                "",
            ]
        if self.runs:
            lines += [f"Command: `python -m bench {' '.join(self.runs[-1]['argv'])}`".replace("bench ` ", "bench`"), ""]
        lines += [
            "Every figure is a ratio or a paired comparison measured within one run; the median of the",
            "repetitions is judged. `info` rows carry no goal: they explain the others.",
            "",
            "| # | figure | goal | measured (median) | repetitions | result |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in sorted(self.rows.values(), key=lambda r: _sort_key(r["key"])):
            unit = f" {r['unit']}" if r.get("unit") else ""
            reps = ", ".join(_fmt(v) for v in r.get("values", [])) or "–"
            meas = "–" if r.get("measured") is None else _fmt(r["measured"]) + unit
            status = r.get("status", "")
            status = {"pass": "**pass**", "fail": "**FAIL**"}.get(status, status)
            fig = r["figure"].replace("|", "\\|")
            lines.append(f"| {r['key']} | {fig} | {r.get('goal') or '–'} | {meas} | {reps} | {status} |")
        noted = [r for r in sorted(self.rows.values(), key=lambda r: _sort_key(r["key"])) if r.get("note")]
        if noted:
            lines += ["", "## Notes", ""]
            for r in noted:
                lines.append(f"- **{r['key']}** ({r.get('measured_at', '')}): {r['note']}")
        if self.notes:
            lines += [""]
            for k, v in sorted(self.notes.items()):
                lines += [f"## {k}", "", v, ""]
        return "\n".join(lines).rstrip() + "\n"


def _sort_key(key: str) -> tuple:
    parts = re.split(r"[._]", key)
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


# ---- corpora ----------------------------------------------------------------------------------


def corpus_pages(root: Optional[Path] = None) -> list[Path]:
    root = root or corpus_root()
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in (".md", ".markdown", ".txt"))


def spread(items: list, n: Optional[int]) -> list:
    """n items spread evenly over the list (all when n is None or too big): a representative subset."""
    if n is None or n >= len(items):
        return list(items)
    if n <= 0:
        return []
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


_FENCE = re.compile(r"^\s*(```|~~~)")
_PROSE = re.compile(r"^[A-Za-z]")


def perturb(text: str, copy: int, rnd: random.Random) -> str:
    """A different but equally realistic page: a numbered sentence after the front matter and
    title, and a few adjacent words swapped in prose lines (never in front matter or code)."""
    lines = text.split("\n")
    start = 0
    if lines and lines[0].strip() == "---":
        for i in range(1, len(lines)):
            if lines[i].strip() in ("---", "..."):
                start = i + 1
                break
    in_fence = False
    for i in range(start, len(lines)):
        line = lines[i]
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence or not _PROSE.match(line):
            continue
        words = line.split(" ")
        if len(words) >= 8 and rnd.random() < 0.25:
            j = rnd.randrange(1, len(words) - 2)
            if all(w.isalpha() for w in (words[j], words[j + 1])):
                words[j], words[j + 1] = words[j + 1], words[j]
                lines[i] = " ".join(words)
    note = (
        f"This is copy {copy + 1} of 10 of this page, kept as revision {copy + 1} for the "
        f"benchmark; sentence {copy + 1} makes its hash differ."
    )
    insert = start
    for i in range(start, len(lines)):  # after the first heading, if it comes before any prose
        s = lines[i].strip()
        if not s:
            continue
        insert = i + 1 if s.startswith("#") else i
        break
    lines[insert:insert] = ["", note, ""]
    return "\n".join(lines)


class Workspace:
    """Temp folders for the corpus copies and the homes of this run (removed at the end)."""

    def __init__(self, keep: bool = False) -> None:
        base = os.environ.get("KBINGEST_BENCH_TMP") or None
        self.root = Path(tempfile.mkdtemp(prefix="kbingest-bench-", dir=base))
        self.keep = keep
        self._subsets: dict[Optional[int], Path] = {}
        self._tenx: dict[Optional[int], Path] = {}
        self._homes = 0
        self.all_pages = corpus_pages()
        if not self.all_pages:
            raise SystemExit(f"no pages found in the corpus {corpus_root()} (set {CORPUS_ENV})")

    def n_pages(self, n: Optional[int]) -> int:
        return len(spread(self.all_pages, n))

    def subset(self, n: Optional[int]) -> Path:
        """A copy of n pages of the corpus (all when None), same relative paths."""
        key = None if n is None or n >= len(self.all_pages) else n
        if key not in self._subsets:
            dest = self.root / f"corpus-{key or 'all'}"
            src = corpus_root()
            for p in spread(self.all_pages, key):
                out = dest / p.relative_to(src)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, out)
            self._subsets[key] = dest
        return self._subsets[key]

    def tenx(self, n: Optional[int]) -> Path:
        """Each page of the subset copied 10 times with perturbed text (so every hash differs)."""
        key = None if n is None or n >= len(self.all_pages) else n
        if key not in self._tenx:
            dest = self.root / f"corpus10x-{key or 'all'}"
            src = corpus_root()
            for p in spread(self.all_pages, key):
                rel = p.relative_to(src)
                text = p.read_text(encoding="utf-8", errors="replace")
                for k in range(10):
                    rnd = random.Random(f"{rel}:{k}")
                    out = dest / f"copy{k:02d}" / rel
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(perturb(text, k, rnd), encoding="utf-8")
            self._tenx[key] = dest
        return self._tenx[key]

    def home(self, tag: str) -> Path:
        self._homes += 1
        h = self.root / f"home-{self._homes:03d}-{tag}"
        return h

    def drop(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def cleanup(self) -> None:
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)


def corpus_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---- subprocesses -----------------------------------------------------------------------------


@dataclass
class ProcResult:
    cmd: list[str]
    rc: int
    wall: float  # seconds from just before spawn to reaped exit
    maxrss_mib: float  # the child's own peak RSS (wait4 rusage, exact)
    stdout: Path
    stderr: Path
    signalled_at: Optional[float] = None
    timed_out: bool = False
    cpu_s: float = 0.0  # user + system CPU seconds of the child

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stdout.read_text(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def final(self) -> Optional[dict[str, Any]]:
        ls = self.lines()
        return ls[-1] if ls else None

    def stderr_tail(self, n: int = 1500) -> str:
        try:
            return self.stderr.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def bench_env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    # as a user's Python runs: it keeps the bytecode of what it imported (this sandbox's environment
    # turns that off, which makes every command compile kbingest's own modules again, ~0.1 s)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("KBINGEST_FAKE_DELAY", None)
    env.pop("KBINGEST_FAKE_FAIL_ON", None)
    env.pop("KBINGEST_CRASH_AT", None)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if extra:
        env.update(extra)
    return env


def run_proc(
    cmd: list[str],
    out_prefix: Path,
    env: Optional[dict[str, str]] = None,
    timeout: Optional[float] = None,
    signal_after: Optional[float] = None,
    signal_when: Optional[Callable[[], bool]] = None,
    stdin=None,
) -> ProcResult:
    """Run cmd to its exit; stdout/stderr go to files (no pipe can fill up). Peak RSS comes from
    wait4's rusage of this very child, so no sampling can miss the peak. `signal_after` seconds
    (or once `signal_when()` is true) it gets SIGINT, as a user pressing ctrl+c."""
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    so, se = out_prefix.with_suffix(".stdout"), out_prefix.with_suffix(".stderr")
    signalled_at = None
    timed_out = False
    with open(so, "wb") as fo, open(se, "wb") as fe:
        t0 = time.perf_counter()
        p = subprocess.Popen(
            cmd,
            stdout=fo,
            stderr=fe,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            env=env or bench_env(),
            cwd=str(REPO),
            start_new_session=True,
        )
        last_check = 0.0
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            now = time.perf_counter() - t0
            if signalled_at is None:
                fire = signal_after is not None and now >= signal_after
                if not fire and signal_when is not None and now - last_check >= 0.2:
                    last_check = now
                    fire = signal_when()
                if fire:
                    os.kill(p.pid, signal.SIGINT)
                    signalled_at = now
            if timeout is not None and now > timeout:
                timed_out = True
                os.killpg(p.pid, signal.SIGKILL)
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.005)
        wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return ProcResult(
        cmd=cmd,
        rc=p.returncode,
        wall=wall,
        maxrss_mib=ru.ru_maxrss / 1024,
        stdout=so,
        stderr=se,
        signalled_at=signalled_at,
        timed_out=timed_out,
        cpu_s=ru.ru_utime + ru.ru_stime,
    )


def kbingest_cmd() -> list[str]:
    """The installed console script when there is one (what a user runs), else python -m kbingest."""
    script = Path(sys.executable).with_name("kbingest")
    return [str(script)] if script.exists() else [sys.executable, "-m", "kbingest"]


def run_ingest(
    ws: Workspace,
    home: Path,
    sources: list[Path],
    kb: str = "bench",
    extra: Sequence[str] = (),
    env_extra: Optional[dict[str, str]] = None,
    tag: str = "ingest",
    **kw: Any,
) -> ProcResult:
    cmd = kbingest_cmd() + ["--home", str(home), "ingest", *map(str, sources), "--kb", kb, "--batch", *extra]
    return run_proc(cmd, ws.root / "logs" / f"{home.name}-{tag}-{time.time_ns()}", env=bench_env(env_extra), **kw)


def run_inproc(
    ws: Workspace, task: str, params: dict[str, Any], timeout: Optional[float] = None, tag: str = ""
) -> tuple[dict[str, Any], ProcResult]:
    """Run `python -m bench.inproc TASK` (a worker measuring inside one process); its last stdout
    line is a JSON object."""
    cmd = [sys.executable, "-m", "bench.inproc", task, json.dumps(params)]
    res = run_proc(cmd, ws.root / "logs" / f"inproc-{task}{tag}-{time.time_ns()}", timeout=timeout)
    data = res.final()
    if res.rc != 0 or data is None:
        raise RuntimeError(f"bench.inproc {task} exited {res.rc}: {res.stderr_tail()}")
    return data, res


def phase(final: dict[str, Any], name: str) -> dict[str, Any]:
    for p in final.get("phase_details", []):
        if p.get("name") == name:
            return p
    return {}


def default_config() -> dict[str, Any]:
    """The engine's defaults, read from the code (so a changed default is what gets measured)."""
    from kbingest.pipeline.models import JobConfig

    f = JobConfig.model_fields
    return {
        k: f[k].default
        for k in (
            "batch_size",
            "threads",
            "commit_rows",
            "commit_seconds",
            "max_tokens",
            "overlap_tokens",
            "optimize_every",
        )
    }
