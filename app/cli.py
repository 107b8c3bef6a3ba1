"""The `kbingest` command line, as contracts/CLI.md fixes it.

stdout is for results (JSON Lines, JSON, tables); everything for people goes to stderr.
A user's mistake is a one-line message and exit 2, never a traceback. Every command calls the
service layer (pipeline/service.py) and nothing below it; app/exit_codes.py maps its errors.
Heavy libraries (LanceDB, fastembed, Textual) are imported only by the commands that use them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from typing import Optional, Sequence

from kbingest.app import text
from kbingest.app.exit_codes import ExitCode, exit_code_for_error
from kbingest.app.logs import log_to_stderr
from kbingest.pipeline.models import DocumentError, JobConfig, JobStatusResponse, job_default
from kbingest.pipeline.service import InvalidInput, KbError, Service, printable

ENV_HOME = "KBINGEST_HOME"
ENV_SERVER = "KBINGEST_SERVER"
ENV_TOKEN = "KBINGEST_TOKEN"
# With --server URL every command goes to the server's HTTP API; these have no route there (contracts/CLI.md)
NOT_REMOTE = {
    "serve": "it serves a home of this machine",
    "drain": "the server's HTTP API has no drain; run `kbingest drain JOB_ID` on the server's machine",
    "repair": "the server's HTTP API has no repair; run `kbingest repair --kb NAME` on the server's machine",
}
LOCAL_ONLY = {"home": "--home", "db": "--db", "db_option": "--db-option", "no_wait": "--no-wait"}

# CLI option -> JobConfig field: help text and defaults come from JobConfig, the one place that says them
JOB_OPTIONS: list[tuple[str, str, dict]] = [
    ("--model", "model", {}),
    ("--chunk-tokens", "max_tokens", {"type": int, "metavar": "N"}),
    ("--overlap", "overlap_tokens", {"type": int, "metavar": "N"}),
    ("--batch-size", "batch_size", {"type": int, "metavar": "N"}),
    ("--threads", "threads", {"type": int, "metavar": "N"}),
    ("--commit-rows", "commit_rows", {"type": int, "metavar": "N"}),
    ("--max-depth", "max_depth", {"type": int, "metavar": "N"}),
    ("--max-files", "max_files", {"type": int, "metavar": "N"}),
    ("--executor", "executor", {"choices": ["threads", "ray"]}),
    ("--ray-address", "ray_address", {"metavar": "auto|HOST:PORT"}),
    ("--ray-embed-actors", "ray_embed_actors", {"type": int, "metavar": "N"}),
    ("--ray-gpus-per-actor", "ray_gpus_per_actor", {"type": float, "metavar": "F"}),
    ("--ray-wave-docs", "ray_wave_docs", {"type": int, "metavar": "N"}),
    ("--embed-context", "embed_context", {"choices": ["yes", "no"]}),  # docs/search.md
    ("--ocr", "ocr", {"choices": ["auto", "off", "force"]}),  # docs/formats.md (OCR)
    ("--ocr-engine", "ocr_engine", {"choices": ["rapidocr", "tesseract"]}),  # docs/formats.md (OCR)
    ("--interval", "interval", {"type": float, "metavar": "SECONDS"}),
]
OPTION_OF_FIELD = {f: opt for opt, f, _ in JOB_OPTIONS} | {
    "max_file_bytes": "--max-file-mb",
    "follow_links": "--follow-links",
    "watch": "--watch",
    "max_removal_share": "--allow-mass-removal",
    "until": "--until",
    "embedder": "--embedder",
}
NO_WAIT_HELP = "refuse (exit 1, one line) instead of waiting as pending while another job writes the knowledge base"


def _add_home(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--home",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help=f"folder holding all state: job store and LanceDB (env {ENV_HOME}; "
        "default: the platform's user data folder for kbingest)",
    )
    p.add_argument(
        "--db",
        metavar="URI",
        default=argparse.SUPPRESS,
        help="where knowledge bases live: a folder or s3://bucket/prefix (env KBINGEST_DB; default "
        "HOME/lancedb); S3 credentials and endpoint from the AWS_* environment",
    )
    p.add_argument(
        "--db-option",
        metavar="KEY=VALUE",
        action="append",
        default=argparse.SUPPRESS,
        help="a LanceDB storage option (repeatable; no secrets: they come from the environment)",
    )


def _add_server(p: argparse.ArgumentParser, default: object = argparse.SUPPRESS) -> None:
    p.add_argument(
        "--server",
        metavar="URL",
        default=default,
        help=f"run the command on a running `kbingest serve` at URL, through its HTTP API, instead of a "
        f"local home; with no command: the dashboard there (env {ENV_SERVER})",
    )
    p.add_argument("--token", metavar="T", default=default, help=f"with --server: the server's token (env {ENV_TOKEN})")


def _help(field: str, unit: str = "") -> str:
    d = job_default(field)
    default = "" if d is None else f" (default {d:g}{unit})" if isinstance(d, float) else f" (default {d}{unit})"
    return ((JobConfig.model_fields[field].description or field) + default).replace("%", "%%")


class _Parser(argparse.ArgumentParser):
    """argparse, with "did you mean" for a mistyped command or choice."""

    def error(self, message: str):
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            choices = [c.strip().strip("'") for c in m.group(2).split(",")]
            guess = text.did_you_mean(m.group(1), choices)
            if guess:
                message += f"; did you mean '{guess}'?"
        super().error(message)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("kbingest")
    except Exception:  # not installed as a distribution (a source tree on the path)
        from kbingest import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="kbingest",
        description="Ingest folders of documents into local LanceDB knowledge bases, "
        "and watch and steer every phase. With no command: the dashboard.",
    )
    p.add_argument("--version", action="version", version=f"kbingest {_version()}")
    _add_home(p)
    _add_server(p, None)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    ing = sub.add_parser("ingest", help="start a job that ingests SOURCE files/folders into knowledge base NAME")
    _add_home(ing)
    _add_server(ing)
    ing.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="file or folder to ingest, or s3://BUCKET/PREFIX/, or https://HOST/PATH/ (a site "
        "crawled within that prefix, or a sitemap.xml): docs/sources.md",
    )
    ing.add_argument("--kb", required=True, metavar="NAME", help="knowledge base (LanceDB table) name")
    ing.add_argument("--batch", action="store_true", help="headless: JSON Lines on stdout, exit codes")
    ing.add_argument("--watch", action="store_true", help=_help("watch").replace(" (default False)", ""))
    for opt, field, kw in JOB_OPTIONS:
        ing.add_argument(opt, dest=field, default=job_default(field), help=_help(field), **kw)
    mb = job_default("max_file_bytes") / (1024 * 1024)
    ing.add_argument(
        "--max-file-mb",
        type=float,
        default=mb,
        metavar="MB",
        help=f"{JobConfig.model_fields['max_file_bytes'].description} (default {mb:g})",
    )
    ing.add_argument(
        "--follow-links",
        action="store_true",
        help=f"{JobConfig.model_fields['follow_links'].description} (default: not followed)",
    )
    ing.add_argument(
        "--allow-mass-removal",
        action="store_true",
        help="let this job remove any share of the knowledge base's documents (by default a pass "
        f"that would remove more than {100 * job_default('max_removal_share'):.0f}%% of them removes none)",
    )
    ing.add_argument("--until", choices=["chunking"], default=None, help=_help("until").replace(" (default None)", ""))
    ing.add_argument("--no-wait", action="store_true", help=NO_WAIT_HELP)
    ing.add_argument(
        "--embedder", choices=["fastembed", "fake"], default=job_default("embedder"), help=argparse.SUPPRESS
    )  # 'fake' for tests only
    ing.add_argument("--job-id", default=None, help=argparse.SUPPRESS)

    res = sub.add_parser("resume", help="continue a paused, interrupted or failed job; retry a finished job's failures")
    _add_home(res)
    _add_server(res)
    res.add_argument("job_id", metavar="JOB_ID")
    res.add_argument("--batch", action="store_true", help="headless: JSON Lines on stdout, exit codes")
    res.add_argument("--no-wait", action="store_true", help=NO_WAIT_HELP)

    for name, what in (
        ("pause", "pause"),
        ("cancel", "cancel"),
        ("drain", "drain (take no new documents, commit those loaded, complete)"),
    ):
        c = sub.add_parser(name, help=f"ask a job running in another process to {what}; returns once it has")
        _add_home(c)
        _add_server(c)
        c.add_argument("job_id", metavar="JOB_ID")
        c.add_argument(
            "--timeout",
            type=float,
            default=120.0,
            help="seconds to wait (default 120); past it, exit 5 and the request is withdrawn",
        )

    st = sub.add_parser("status", help="one job's status (the newest, or JOB_ID, or the newest of --kb)")
    _add_home(st)
    _add_server(st)
    st.add_argument("job_id", nargs="?", metavar="JOB_ID")
    st.add_argument("--kb", metavar="NAME")
    st.add_argument("--json", action="store_true", help="one JSON object valid against job_status.schema.json")

    jb = sub.add_parser("jobs", help="all jobs, newest first")
    _add_home(jb)
    _add_server(jb)
    jb.add_argument("--json", action="store_true", help="a JSON array of status objects")

    rp = sub.add_parser(
        "repair",
        help="check knowledge base NAME; bring a damaged one back (its last readable "
        "version, or re-created for the next ingest to rebuild)",
    )
    _add_home(rp)
    _add_server(rp)
    rp.add_argument("--kb", required=True, metavar="NAME")

    se = sub.add_parser("search", help="the N best chunks for QUERY")
    _add_home(se)
    _add_server(se)
    se.add_argument("query", metavar="QUERY")
    se.add_argument("--kb", required=True, metavar="NAME")
    se.add_argument("-k", type=int, default=5, metavar="N", help="how many chunks (default 5)")
    se.add_argument("--json", action="store_true", help="a JSON array of hits")
    se.add_argument(
        "--mode",
        choices=["vector", "text", "hybrid"],
        default="hybrid",
        help="vector (cosine), text (full-text BM25) or hybrid: both fused by reciprocal rank (default)",
    )

    sv = sub.add_parser("serve", help="the HTTP API (status, control, events, search, metrics) on this home")
    _add_home(sv)
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs a token)")
    sv.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    sv.add_argument(
        "--token", default=None, metavar="T", help="clients must send `Authorization: Bearer T` (env KBINGEST_TOKEN)"
    )
    sv.add_argument(
        "--allow-root",
        action="append",
        default=[],
        metavar="DIR",
        dest="allow_roots",
        help="jobs started over HTTP may read sources under DIR (repeatable; none: starting is off)",
    )
    sv.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        dest="allow_hosts",
        help="without a token, answer requests addressed to NAME too, besides the loopback and the "
        "bound address (repeatable)",
    )
    sv.add_argument(
        "--allow-url",
        action="append",
        default=[],
        metavar="PREFIX",
        dest="allow_urls",
        help="let jobs started over HTTP read s3:// objects or crawl pages under this URL prefix "
        "(repeatable; loopback and private addresses only when PREFIX names that host): "
        "docs/sources.md",
    )
    sv.add_argument(
        "--notify",
        action="append",
        default=[],
        metavar="URL",
        help="POST the final status of each job that ends in this server to URL (repeatable)",
    )
    sv.add_argument(
        "--rate-limit",
        type=float,
        default=None,
        metavar="N",
        help="requests a second each client address may make, 304s, long-poll waits and loopback peers "
        "not counted (default 50, burst twice that; 0: no limit; docs/serve.md)",
    )
    sv.add_argument("--web", action="store_true", help="also serve the dashboard in a browser at /ui/ (docs/serve.md)")
    sv.add_argument(
        "--web-sessions",
        type=int,
        default=4,
        metavar="N",
        help="with --web: browser sessions at once, each a dashboard process (default 4; 503 beyond)",
    )
    sv.add_argument(
        "--web-idle",
        type=float,
        default=900.0,
        metavar="SECONDS",
        help="with --web: a browser session without input for this long is closed (default 900)",
    )
    sv.add_argument(
        "--web-refresh",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="with --web: how often a browser session's dashboard redraws (default 2; 0.5 to 60; "
        "each redraw is CPU the job does not get)",
    )
    sv.add_argument(
        "--no-status-front",
        action="store_false",
        dest="status_front",
        help="no effect: kept for scripts (the server is one process)",
    )
    return p


# ---- helpers --------------------------------------------------------------------------------
def _service(args: argparse.Namespace) -> Service:
    """The one place a command gets its service: the server's over HTTP with --server
    (app/remote.py's RemoteService, the same methods), else the local home's."""
    remote = getattr(args, "remote", None)
    return remote if remote is not None else Service(getattr(args, "home", None))


def _server_of(args: argparse.Namespace) -> tuple[Optional[str], str]:
    """(URL, where it was given) from --server, else KBINGEST_SERVER; an empty value is none."""
    if args.server is not None:
        return (args.server.strip() or None), "--server"
    return (os.environ.get(ENV_SERVER, "").strip() or None), ENV_SERVER


def _connect(args: argparse.Namespace) -> None:
    """--server URL (or KBINGEST_SERVER): every command goes to the server, or is refused (exit 2):
    never answered from the local home."""
    url, given = _server_of(args)
    args.remote = None
    if url is None:
        return
    command = args.command
    if command in NOT_REMOTE:
        raise InvalidInput(f"`kbingest {command}` does not run on a server ({given} {url}): {NOT_REMOTE[command]}")
    for attr, opt in LOCAL_ONLY.items():
        if getattr(args, attr, None):
            raise InvalidInput(f"{opt} is for a local home; with {given} {url} the server's is used (drop one of them)")
    if not url.startswith(("http://", "https://")):
        raise InvalidInput(f"{given} {url}: give the server's URL, such as http://127.0.0.1:8000")
    from kbingest.app.remote import RemoteService

    args.remote = RemoteService(url, token=args.token or os.environ.get(ENV_TOKEN) or None)


def _say(msg: str) -> None:
    sys.stderr.write(printable(f"kbingest: {msg}") + "\n")
    sys.stderr.flush()


def _notices(svc: Service) -> None:
    for n in svc.notices:
        _say(n)
    svc.notices.clear()


def _config_from(args: argparse.Namespace) -> JobConfig:
    remote = getattr(args, "remote", None)
    settings = {field: getattr(args, field) for _, field, _ in JOB_OPTIONS}
    settings.update(
        max_file_bytes=max(1, int(args.max_file_mb * 1024 * 1024)),
        follow_links=args.follow_links,
        watch=args.watch,
        embedder=args.embedder,
        until=args.until,
    )
    if remote is None:  # a server's jobs keep their knowledge bases where the server says
        settings.update(
            Service.location_settings(
                getattr(args, "home", None), getattr(args, "db", None), getattr(args, "db_option", None)
            )
        )
    if args.allow_mass_removal:
        settings["max_removal_share"] = 1.0
    try:
        return (remote or Service).config(args.sources, args.kb, **settings)
    except InvalidInput as e:
        opt = OPTION_OF_FIELD.get(e.setting or "")
        if opt:
            raise InvalidInput(f"{opt}: {e.message.split(': ', 1)[-1]}", setting=e.setting) from None
        raise


# ---- commands -------------------------------------------------------------------------------
def cmd_ingest(args: argparse.Namespace) -> int:
    config = _config_from(args)
    svc = _service(args)
    job = svc.start(config, job_id=args.job_id, wait=not args.no_wait)
    _notices(svc)
    return _run(job, svc, batch=args.batch)


def cmd_resume(args: argparse.Namespace) -> int:
    svc = _service(args)
    job = svc.resume(args.job_id, wait=not args.no_wait)
    _notices(svc)
    return _run(job, svc, batch=args.batch)


def _run(job, svc: Service, batch: bool) -> int:
    """A watch job and a dashboard answer `kbingest search` in this home while they run (warm).
    With --server the job runs in the server: --batch follows its events, the dashboard shows it there."""
    if getattr(svc, "url", None) is not None:
        if batch:
            from kbingest.app.batch import run_remote_batch

            return int(run_remote_batch(svc, job))
        from kbingest.app.dashboard import run_dashboard

        return int(run_dashboard(svc, job))
    resident = svc.answer_searches() if (job.config.watch or not batch) else contextlib.nullcontext()
    with resident:
        if batch:
            from kbingest.app.batch import run_batch

            log_to_stderr()
            return int(run_batch(job))
        from kbingest.app.dashboard import run_dashboard

        return int(run_dashboard(svc, job))


def cmd_control(args: argparse.Namespace, what: str) -> int:
    svc = _service(args)
    before = svc.job(args.job_id)
    if before.status.status.value == {"pause": "paused", "cancel": "cancelled"}.get(what):
        _say(f"job {before.job_id} is already {before.status.status.value}")
        return int(ExitCode.OK)
    act = getattr(svc, what)  # pause, cancel or drain (a server's: pause and cancel)
    snap = act(before.job_id, args.timeout)
    waited = before.status.status.value == "running"
    _say(f"job {before.job_id} is {snap.status.value}" if waited else f"job {before.job_id} {snap.status.value}")
    return int(ExitCode.OK)


def _human_status(s: JobStatusResponse, errors: list[DocumentError]) -> str:
    head = f"job {s.job_id}  kb {s.kb_id}  {s.status.value}  {s.progress:.1f}%"
    if s.eta_seconds is not None:
        head += f"  {text.eta(s.eta_seconds)}"
    lines = [head + f"  phase {s.phase.value}", f"  {s.message}"]
    if s.error:
        lines.append(f"  error: {s.error}")
    for p in s.phase_details:
        lines.append("  " + text.phase_line(p))
        if p.error:
            lines.append(f"            {p.error}")
    lines.extend("  " + line for line in text.metric_lines(s.metrics))
    passed = text.this_pass_line(s.m.this_pass)
    if passed:
        lines.append("  " + passed)
    lines.extend(_dry_run_lines(s.m.dry_run))
    for e in errors:
        lines.append(f"  failed: {e.phase}: {e.path}: {e.kind}: {e.message}")
    failed = s.m.documents_failed or 0
    if failed > len(errors):
        lines.append(f"  … and {failed - len(errors)} more failed document(s)")
    for w in s.m.document_warning_list or []:
        lines.append(f"  warning: {w.get('path')}: {w.get('warning')}")
    return "\n".join(printable(line) for line in lines)


def _dry_run_lines(d: Optional[dict]) -> list[str]:
    """A dry run's report: counts, tokens per document as a histogram, the embedding estimate."""
    if not d:
        return []
    est = d.get("estimated_embedding_seconds")
    out = [
        f"  dry run: {d.get('documents')} document(s), {d.get('chunks')} chunks, {d.get('tokens')} tokens; "
        + (
            f"embedding about {est:.0f} s at {d.get('embed_rate_chunks_per_s')} chunks/s ({d.get('rate_source')})"
            if est is not None
            else "embedding time unknown"
        ),
        "  tokens per document:",
    ]
    hist = d.get("tokens_per_document_histogram") or {}
    top = max(hist.values(), default=1)
    for k, n in hist.items():
        out.append(f"    {k:>11} {n:6d} {'#' * max(1, round(30 * n / top))}")
    return out


def cmd_status(args: argparse.Namespace) -> int:
    svc = _service(args)
    info = svc.find(args.job_id, args.kb)
    _notices(svc)
    print(info.status.to_json() if args.json else _human_status(info.status, info.errors))
    return int(ExitCode.OK)


def cmd_jobs(args: argparse.Namespace) -> int:
    svc = _service(args)
    infos = svc.jobs()
    _notices(svc)
    if args.json:
        print(json.dumps([i.status.to_json_dict() for i in infos]))
        return int(ExitCode.OK)
    if not infos:
        _say("no jobs in this home yet")
        return int(ExitCode.OK)
    for line in text.jobs_table((i.job_id, i.status, i.created_at) for i in infos):
        print(printable(line))
    return int(ExitCode.OK)


def cmd_search(args: argparse.Namespace) -> int:
    svc = _service(args)
    if svc is getattr(args, "remote", None):
        hits = svc.search(args.kb, args.query, args.k, mode=args.mode)
    else:
        Service.one_shot_search()
        svc.resident_search = True  # a `kbingest serve` of this home answers warm
        hits = svc.search(
            args.kb,
            args.query,
            args.k,
            mode=args.mode,
            db=getattr(args, "db", None),
            db_options=Service.db_options(getattr(args, "db_option", None)),
        )
    _notices(svc)
    if args.json:
        print(json.dumps([h.__dict__ for h in hits]))
    else:
        for i, h in enumerate(hits, 1):  # relevance in [0, 1], the file relative to its SOURCE (docs/search.md)
            page = f"  p. {h.page}" if h.page is not None else ""
            rel = h.relevance if h.relevance is not None else h.score
            print(printable(f"{i}. {rel:.2f}  {h.path or h.source}{page}  [{h.heading_path}]"))
            print(printable("   " + h.text[:200].replace("\n", " ")))
    return int(ExitCode.OK)


def cmd_repair(args: argparse.Namespace) -> int:
    print(
        printable(
            _service(args).repair(
                args.kb, db=getattr(args, "db", None), db_options=Service.db_options(getattr(args, "db_option", None))
            )
        )
    )
    return int(ExitCode.OK)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from kbingest.app.dashboard import run_dashboard

    remote = getattr(args, "remote", None)
    if remote is not None:
        remote.ping()
        return int(run_dashboard(remote, None))
    svc = _service(args)
    with svc.answer_searches():  # `kbingest search` in another shell asks this process, warm
        return int(run_dashboard(svc, None))


def cmd_serve(args: argparse.Namespace) -> int:
    from kbingest.app.server import ServerConfig, serve

    log_to_stderr()
    cfg = ServerConfig(
        host=args.host,
        port=args.port,
        token=args.token,
        allow_roots=args.allow_roots,
        notify=args.notify,
        allow_hosts=args.allow_hosts,
        allow_urls=args.allow_urls,
        web=args.web,
        web_sessions=args.web_sessions,
        web_idle=args.web_idle,
        web_refresh=args.web_refresh,
        **({} if args.rate_limit is None else {"rate_limit": args.rate_limit}),
    )
    return serve(cfg, getattr(args, "home", None))


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


def _quiet_closed_stdout() -> None:
    """stdout's reader went away (`| head -c1`): exit quietly, as Unix tools do."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError):
        pass


COMMANDS = {
    "ingest": cmd_ingest,
    "resume": cmd_resume,
    "status": cmd_status,
    "jobs": cmd_jobs,
    "search": cmd_search,
    "repair": cmd_repair,
    "pause": lambda a: cmd_control(a, "pause"),
    "cancel": lambda a: cmd_control(a, "cancel"),
    "serve": cmd_serve,
    "drain": lambda a: cmd_control(a, "drain"),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    os.umask(0o077)  # everything kbingest creates in its home is the owner's only
    _limit_malloc_arenas()
    args = build_parser().parse_args(argv)
    try:
        _connect(args)
        if args.command is None:
            return cmd_dashboard(args)
        return COMMANDS[args.command](args)
    except KbError as e:
        _say(e.message)
        return int(exit_code_for_error(e))
    except KeyboardInterrupt:
        return int(ExitCode.PAUSED)
    except BrokenPipeError:
        _quiet_closed_stdout()
        return int(ExitCode.OK)
    except Exception as e:  # a failure of kbingest's own, said in its words (KBINGEST_DEBUG=1: the traceback)
        from kbingest.pipeline.service import debug, describe

        if debug():
            raise
        _say(describe(e, doing=f"kbingest {args.command or 'dashboard'}"))
        return int(ExitCode.FAILED)
    except BaseException as e:  # a Rust library's panic (pyo3's PanicException derives from BaseException)
        if type(e).__name__ != "PanicException":
            raise
        from kbingest.pipeline.service import debug, describe

        if debug():
            raise
        _say(describe(e, doing=f"kbingest {args.command or 'dashboard'}"))
        return int(ExitCode.FAILED)


def entry() -> None:
    sys.exit(main())
