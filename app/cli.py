"""The `kbingest` command line, as contracts/CLI.md fixes it.

stdout is for results (JSON Lines, JSON, tables); everything for people goes to stderr.
A user's mistake is a one-line message and exit 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional, Sequence

from kbingest.app.exit_codes import ExitCode
from kbingest.pipeline.models import JobConfig, JobRecord, JobStatusResponse
from kbingest.pipeline.paths import ENV_HOME, Home, InvalidName, validate_name
from kbingest.pipeline.status import JobStatus
from kbingest.pipeline.storage import KbLocation, StorageError, parse_options
from kbingest.pipeline.textsafe import printable
from kbingest.pipeline.jobs import effective_status


class UsageError(Exception):
    pass


def _add_home(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", metavar="DIR", default=argparse.SUPPRESS,
                   help=f"folder holding all state: job store and LanceDB (env {ENV_HOME}; "
                        "default: the platform's user data folder for kbingest)")
    p.add_argument("--db", metavar="URI", default=argparse.SUPPRESS,
                   help="where knowledge bases live: a folder or s3://bucket/prefix (env KBINGEST_DB; default "
                        "HOME/lancedb); S3 credentials and endpoint from the AWS_* environment variables")
    p.add_argument("--db-option", metavar="KEY=VALUE", action="append", default=argparse.SUPPRESS,
                   help="a LanceDB storage option, repeatable (stored with the job: no secrets)")


def _default(field: str):
    """A job setting's default: JobConfig is the one place that says it."""
    return JobConfig.model_fields[field].default


def build_parser() -> argparse.ArgumentParser:
    d = _default
    p = argparse.ArgumentParser(
        prog="kbingest",
        description="Ingest folders of Markdown and text into local LanceDB knowledge bases, "
                    "and watch and steer every phase. With no command: the dashboard.")
    _add_home(p)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    ing = sub.add_parser("ingest", help="start a job that ingests SOURCE files/folders into knowledge base NAME")
    _add_home(ing)
    ing.add_argument("sources", nargs="+", metavar="SOURCE", help="file or folder to ingest")
    ing.add_argument("--kb", required=True, metavar="NAME", help="knowledge base (LanceDB table) name")
    ing.add_argument("--batch", action="store_true", help="headless: JSON Lines on stdout, exit codes")
    ing.add_argument("--watch", action="store_true", help="keep running and ingest what changes under the sources")
    ing.add_argument("--model", default=d("model"),
                     help="fastembed model name (default: the shipped all-MiniLM-L6-v2, offline)")
    ing.add_argument("--chunk-tokens", type=int, default=d("max_tokens"), metavar="N",
                     help=f"chunk budget in model tokens (default {d('max_tokens')}: all-MiniLM-L6-v2 reads 256 "
                          "with specials)")
    ing.add_argument("--overlap", type=int, default=d("overlap_tokens"), metavar="N",
                     help=f"overlap between chunks, tokens (default {d('overlap_tokens')})")
    ing.add_argument("--batch-size", type=int, default=d("batch_size"), metavar="N",
                     help=f"chunks per embedding call (default {d('batch_size')}: on CPU, batching only adds "
                          "padding; raise it for a GPU)")
    ing.add_argument("--threads", type=int, default=d("threads"), metavar="N",
                     help="onnxruntime threads (default: onnxruntime's choice, every core)")
    ing.add_argument("--commit-rows", type=int, default=d("commit_rows"), metavar="N",
                     help=f"rows per LanceDB commit (default {d('commit_rows')}; a commit also happens every "
                          f"{d('commit_seconds'):g} s)")
    ing.add_argument("--max-file-mb", type=float, default=d("max_file_bytes") / (1024 * 1024), metavar="MB",
                     help=f"skip larger files (default {d('max_file_bytes') / (1024 * 1024):g})")
    ing.add_argument("--max-depth", type=int, default=d("max_depth"), metavar="N",
                     help=f"folder depth limit (default {d('max_depth')})")
    ing.add_argument("--max-files", type=int, default=d("max_files"), metavar="N",
                     help=f"documents per job limit (default {d('max_files')})")
    ing.add_argument("--follow-links", action="store_true",
                     help="follow symbolic links, even out of the source folder (default: not followed)")
    ing.add_argument("--embedder", choices=["fastembed", "fake"], default="fastembed",
                     help=argparse.SUPPRESS)  # 'fake' for tests only
    ing.add_argument("--job-id", default=None, help=argparse.SUPPRESS)

    res = sub.add_parser("resume", help="continue a paused, interrupted or failed job; retry a finished job's failures")
    _add_home(res)
    res.add_argument("job_id", metavar="JOB_ID")
    res.add_argument("--batch", action="store_true", help="headless: JSON Lines on stdout, exit codes")

    for name, what in (("pause", "pause"), ("cancel", "cancel")):
        c = sub.add_parser(name, help=f"ask a job running in another process to {what}; returns once it has")
        _add_home(c)
        c.add_argument("job_id", metavar="JOB_ID")
        c.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (default 120)")

    st = sub.add_parser("status", help="one job's status (the newest, or JOB_ID, or the newest of --kb)")
    _add_home(st)
    st.add_argument("job_id", nargs="?", metavar="JOB_ID")
    st.add_argument("--kb", metavar="NAME")
    st.add_argument("--json", action="store_true", help="one JSON object valid against job_status.schema.json")

    jb = sub.add_parser("jobs", help="all jobs, newest first")
    _add_home(jb)
    jb.add_argument("--json", action="store_true", help="a JSON array of status objects")

    se = sub.add_parser("search", help="the N best chunks for QUERY")
    _add_home(se)
    se.add_argument("query", metavar="QUERY")
    se.add_argument("--kb", required=True, metavar="NAME")
    se.add_argument("-k", type=int, default=5, metavar="N", help="how many chunks (default 5)")
    se.add_argument("--json", action="store_true", help="a JSON array of hits")
    se.add_argument("--mode", choices=["vector", "text", "hybrid"], default="hybrid",
                    help="vector (cosine), text (BM25 full-text) or hybrid (both, reciprocal-rank fusion; default)")
    return p


# ---- helpers --------------------------------------------------------------------------------
def _home(args: argparse.Namespace) -> Home:
    return Home(getattr(args, "home", None))


def _store(home: Home):
    from kbingest.pipeline.jobs import open_store

    store = open_store(home)
    if store.recovered_from is not None:
        _say(f"the job store did not parse; it was moved aside to {store.recovered_from} "
             "and rebuilt from the knowledge bases")
    return store


def _say(msg: str) -> None:
    sys.stderr.write(printable(f"kbingest: {msg}") + "\n")
    sys.stderr.flush()


def _find_job(store, job_id: Optional[str], kb: Optional[str]) -> JobRecord:
    if job_id:
        rec = store.get(validate_name(job_id, "job id"))
        if rec is None:
            raise UsageError(f"no job {job_id!r} in this home (see `kbingest jobs`)")
        return rec
    recs = store.all()
    if kb:
        validate_name(kb, "knowledge base name")
        recs = [r for r in recs if r.config.kb == kb]
    if not recs:
        raise UsageError("no jobs in this home yet" if not kb else f"no job for knowledge base {kb!r}")
    return recs[0]


def _config_from(args: argparse.Namespace) -> JobConfig:
    from kbingest.pipeline.loading import SourceError, validate_sources

    validate_name(args.kb, "knowledge base name")
    try:
        sources = validate_sources(args.sources)
    except SourceError as e:
        raise UsageError(str(e)) from None
    if args.chunk_tokens < 16:
        raise UsageError("--chunk-tokens must be at least 16")
    if args.overlap < 0 or args.overlap >= args.chunk_tokens:
        raise UsageError("--overlap must be at least 0 and smaller than --chunk-tokens")
    if args.model == "all-MiniLM-L6-v2" and args.chunk_tokens > 254:
        raise UsageError("all-MiniLM-L6-v2 reads 256 tokens with its 2 special tokens: --chunk-tokens at most 254")
    try:
        return JobConfig(
            sources=sources, kb=args.kb, model=args.model, embedder=args.embedder,
            max_tokens=args.chunk_tokens, overlap_tokens=args.overlap, batch_size=args.batch_size,
            threads=args.threads, commit_rows=args.commit_rows,
            max_file_bytes=max(1, int(args.max_file_mb * 1024 * 1024)), max_depth=args.max_depth,
            max_files=args.max_files, follow_links=args.follow_links, watch=args.watch,
            **KbLocation.from_flags(_home(args), getattr(args, "db", None), getattr(args, "db_option", None))
            .job_fields(_home(args)),
        )
    except ValueError as e:
        raise UsageError(str(e).splitlines()[0] if str(e) else "invalid options") from None


# ---- commands -------------------------------------------------------------------------------
def cmd_ingest(args: argparse.Namespace) -> int:
    from kbingest.pipeline.engine import IngestJob

    config = _config_from(args)
    home = _home(args)
    store = _store(home)
    if args.job_id:
        validate_name(args.job_id, "job id")
        if store.get(args.job_id):
            raise UsageError(f"job {args.job_id!r} exists already: resume it with `kbingest resume {args.job_id}`")
    _check_not_locked(home)
    job = IngestJob.create(home, store, config, job_id=args.job_id)
    return _run(job, home, batch=args.batch)


def cmd_resume(args: argparse.Namespace) -> int:
    from kbingest.pipeline.engine import IngestJob

    home = _home(args)
    store = _store(home)
    rec = _find_job(store, args.job_id, None)
    if rec.status.status == JobStatus.CANCELLED:
        raise UsageError(f"job {rec.job_id} was cancelled and cannot be resumed; start a new `kbingest ingest`")
    _check_not_locked(home)
    from kbingest.pipeline.jobs import mark_interrupted

    mark_interrupted(home, store)  # its process died: the job is shown paused (interrupted) until this one runs it
    job = IngestJob.load(home, store, rec.job_id)
    return _run(job, home, batch=args.batch)


def _check_not_locked(home: Home) -> None:
    from kbingest.pipeline.locking import HomeLocked, holder_pid, is_locked

    if is_locked(home.engine_lock_file):
        raise UsageError(str(HomeLocked(home.engine_lock_file, holder_pid(home.engine_lock_file))))


def _log_to_stderr() -> None:
    """Engine warnings (retries, a failed worker) as one escaped line each on stderr: no traceback
    (KBINGEST_DEBUG=1 shows them), no raw control characters from file names or exceptions."""
    import logging

    class OneLine(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            text = printable(f"kbingest: {record.getMessage()}")
            if record.exc_info and os.environ.get("KBINGEST_DEBUG"):
                text += "\n" + self.formatException(record.exc_info)
            return text

    logger = logging.getLogger("kbingest")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(OneLine())
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False


def _run(job, home: Home, batch: bool) -> int:
    if batch:
        from kbingest.app.batch import run_batch

        _log_to_stderr()
        return int(run_batch(job))
    from kbingest.app.dashboard import run_dashboard

    return int(run_dashboard(home, job))


def cmd_control(args: argparse.Namespace, what: str) -> int:
    from kbingest.pipeline.jobs import cancel_stored

    home = _home(args)
    store = _store(home)
    rec = _find_job(store, args.job_id, None)
    target = JobStatus.PAUSED if what == "pause" else JobStatus.CANCELLED
    cur = effective_status(rec, home).status  # a job whose process died is not running: it is paused
    if cur == target:
        _say(f"job {rec.job_id} is already {cur.value}")
        return int(ExitCode.OK)
    if what == "cancel":
        outcome = cancel_stored(home, store, rec.job_id)  # decided under the store's lock
        if outcome == "cancelled":
            _say(f"job {rec.job_id} cancelled")
            return int(ExitCode.OK)
        if outcome != "requested":
            _say(f"job {rec.job_id} is {cur.value}; nothing to cancel")
            return int(ExitCode.USAGE)
    else:
        if cur != JobStatus.RUNNING:
            _say(f"job {rec.job_id} is not running (it is {cur.value}); nothing to pause")
            return int(ExitCode.USAGE)
        store.request(rec.job_id, what)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = store.get(rec.job_id)
        if now is not None and now.status.status.is_terminal or (now and now.status.status == JobStatus.PAUSED):
            _say(f"job {rec.job_id} is {now.status.status.value}")
            return int(ExitCode.OK)
    _say(f"job {rec.job_id} did not {what} within {args.timeout:g} s")
    return int(ExitCode.FAILED)


def _human_status(s: JobStatusResponse, errors: list) -> str:
    lines = [f"job {s.job_id}  kb {s.kb_id}  {s.status.value}  {s.progress:.1f}%  phase {s.phase.value}",
             f"  {s.message}"]
    if s.error:
        lines.append(f"  error: {s.error}")
    for p in s.phase_details:
        rate = f"{p.rate:.1f}/s" if p.rate else ""
        eta = f"ETA {p.eta_seconds:.0f}s" if p.eta_seconds is not None else ""
        dur = f"{p.duration_seconds:.1f}s" if p.duration_seconds is not None else ""
        lines.append(f"  {p.name:9} {p.status.value:9} {p.progress:3d}%  {p.items_processed}/{p.items_total}"
                     f"  {rate} {eta} {dur}".rstrip())
        if p.error:
            lines.append(f"            {p.error}")
    m = {k: v for k, v in s.metrics.items() if k not in ("document_errors", "document_warning_list")}
    if m:
        lines.append("  " + ", ".join(f"{k}={v}" for k, v in sorted(m.items())))
    for e in errors:
        lines.append(f"  failed: {e.phase}: {e.path}: {e.kind}: {e.message}")
    for w in s.metrics.get("document_warning_list") or []:
        lines.append(f"  warning: {w.get('path')}: {w.get('warning')}")
    return "\n".join(printable(line) for line in lines)


def cmd_status(args: argparse.Namespace) -> int:
    home = _home(args)
    store = _store(home)
    rec = _find_job(store, args.job_id, args.kb)
    snap = effective_status(rec, home)
    if args.json:
        print(snap.to_json())
    else:
        print(_human_status(snap, rec.doc_errors))
    return int(ExitCode.OK)


def cmd_jobs(args: argparse.Namespace) -> int:
    home = _home(args)
    store = _store(home)
    recs = store.all()
    if args.json:
        print(json.dumps([effective_status(r, home).to_json_dict() for r in recs]))
        return int(ExitCode.OK)
    if not recs:
        _say("no jobs in this home yet")
    for r in recs:
        s = effective_status(r, home)
        print(printable(f"{r.job_id:40} {s.kb_id:16} {s.status.value:9} {s.progress:5.1f}%  {r.created_at}"))
    return int(ExitCode.OK)


def cmd_search(args: argparse.Namespace) -> int:
    from kbingest.pipeline.search import search

    home = _home(args)
    validate_name(args.kb, "knowledge base name")
    if args.k < 1:
        raise UsageError("-k must be at least 1")
    store = _store(home)
    hits = search(home, store, args.kb, args.query, args.k, mode=args.mode, db=getattr(args, "db", None),
                  db_options=parse_options(getattr(args, "db_option", None)))
    if args.json:
        print(json.dumps([h.__dict__ for h in hits]))
    else:
        for i, h in enumerate(hits, 1):
            print(printable(f"{i}. {h.score:.3f}  {h.source}  [{h.heading_path}]"))
            print(printable("   " + h.text[:200].replace("\n", " ")))
    return int(ExitCode.OK)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from kbingest.app.dashboard import run_dashboard

    return int(run_dashboard(_home(args), None))


def _limit_malloc_arenas(n: int = 2) -> None:
    """glibc gives threads that allocate at the same time arenas of their own, up to 8 a core, and
    keeps what they freed: LanceDB's writer threads and onnxruntime's leave the heap fragmented and
    the RSS growing with the size of the job (docs/benchmarks.md, figure 3). Two arenas keep it flat.
    Done before any thread starts; MALLOC_ARENA_MAX in the environment wins; a no-op off glibc."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, n)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    os.umask(0o077)  # everything kbingest creates in its home is the owner's only
    _limit_malloc_arenas()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command is None:
            return cmd_dashboard(args)
        handler = {
            "ingest": cmd_ingest, "resume": cmd_resume, "status": cmd_status, "jobs": cmd_jobs,
            "search": cmd_search, "pause": lambda a: cmd_control(a, "pause"),
            "cancel": lambda a: cmd_control(a, "cancel"),
        }[args.command]
        return handler(args)
    except (UsageError, InvalidName, LookupError, StorageError) as e:
        _say(str(e))
        return int(ExitCode.USAGE)
    except KeyboardInterrupt:
        return int(ExitCode.PAUSED)
    except Exception as e:
        from kbingest.pipeline.locking import HomeLocked

        if isinstance(e, HomeLocked):
            _say(str(e))
            return int(ExitCode.USAGE)
        from kbingest.pipeline.embedding import EmbeddingError
        from kbingest.pipeline.engine import NotResumable
        from kbingest.pipeline.index import IndexError_

        if isinstance(e, NotResumable):
            _say(str(e))
            return int(ExitCode.USAGE)
        if isinstance(e, (EmbeddingError, IndexError_)):
            _say(str(e))
            return int(ExitCode.FAILED)
        raise


def entry() -> None:
    sys.exit(main())
