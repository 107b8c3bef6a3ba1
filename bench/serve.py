"""The serve figures: status polls against `kbingest serve` (Python clients, wrk)."""

from __future__ import annotations

from bench.common import Row, log
from bench.context import Ctx, fj, json_module


def fig_serve(ctx: Ctx) -> list[Row]:
    """kbingest serve under load: 50 clients polling status at 10 Hz (half plain, half honouring the
    ETag) + one SSE client, real model, the server with its default settings."""
    return _serve_rows(ctx, "pollers")


def fig_serve_wrk(ctx: Ctx) -> list[Row]:
    """The same load from wrk (C) instead of the Python clients, a diagnostic: what the load
    generator's own CPU, on the job's 2 cores, takes from the figure."""
    from bench.serve_load import wrk_binary

    if wrk_binary() is None:
        return [
            Row(
                "15.2w",
                "serve with wrk as the load generator",
                status="pending",
                note="wrk is not installed (Debian: apt-get install wrk)",
            )
        ]
    return _serve_rows(ctx, "wrk")


def _latencies(d: dict) -> str:
    by = ", ".join(
        f"{k} p50 {d['p50_ms_by_kind'][k]:.1f} / p99 {d['p99_ms_by_kind'][k]:.1f} ms ({d['polls_by_kind'][k]} polls)"
        for k in ("plain", "etag")
    )
    return f"{d['polls']} polls ({by}; {d['not_modified']} answered 304), {d['errors']} errors"


def _serve_rows(ctx: Ctx, generator: str) -> list[Row]:
    from bench.serve_load import nginx_binary

    reps, pages = ctx.reps(2, 1), ctx.pages(16, 6) or 16
    floor = ["--floor"] if nginx_binary() else []  # the diagnostic third job, where nginx is installed
    log(
        f"serve load ({generator}): {reps} round(s) of jobs ({pages} pages, real model), without and with 50 clients "
        f"at 10 Hz" + (", and with them polling nginx" if floor else " (no nginx: no floor job)")
    )
    d = json_module(
        "bench.serve_load", "--pages", str(pages), "--reps", str(reps), "--load-generator", generator, *floor
    )
    w = "" if generator == "pollers" else "w"
    cmd = f"python -m bench.serve_load{' --load-generator wrk' if w else ''}"
    kinds = d["clients_by_kind"]
    load = (
        f"{d['clients']} clients at {d['hz']:g} Hz ({kinds['plain']} plain, {kinds['etag']} with If-None-Match) "
        f"+ 1 SSE client, {d['pages']} pages ({d['chunks']} chunks)"
        + ("" if not w else ", the clients from wrk")
        + f"; the load generator at {d['placement']}; the server with its default settings"
    )
    cpu = (
        f"CPU seconds of the server (job included) without {fj(d['server_cpu_bare_s'], '.1f')}, with "
        f"{fj(d['server_cpu_s'], '.1f')}; the load generator {fj(d['client_cpu_s'], '.2f')}"
    )
    rows = [
        Row(
            f"15.1{w}",
            f"serve: p99 latency of GET .../kb/{{kb}}/status under load ({load})",
            unit="ms",
            values=d["p99_per_run_ms"],
            op="<",
            target=50.0,
            goal="< 50 ms",
            note=f"`{cmd}`: {_latencies(d)}, max {d['max_ms']:.0f} ms; SSE events per job {d['sse_events']}, "
            f"final {d['sse_final']}; the same clients with no job running: p50 {d['idle_p50_ms']:.1f} ms, "
            f"p99 {d['idle_p99_ms']:.1f} ms; 1-min load average at each job's end {fj(d['load_avg'], '.1f')} "
            "(2 cores)",
        ),
        Row(
            f"15.2{w}",
            f"serve: job throughput with the clients / without, same run, rotating ({load})",
            unit="x",
            values=d["ratios"],
            op=">=",
            target=0.95,
            goal=">= 0.95",
            note=f"chunks/s without {fj(d['rates_bare'], '.1f')}, with {fj(d['rates'], '.1f')} (job wall time "
            f"from the status, model load included); {cpu}",
        ),
    ]
    f = d.get("floor")
    if f:
        rows.append(
            Row(
                f"15.2{w}f",
                f"serve, a diagnostic (the floor): job throughput with the same clients polling the same status "
                f"bytes served by nginx instead / without, same run, rotating ({load})",
                unit="x",
                values=f["ratios"],
                note=f"`{cmd} --floor`: chunks/s {fj(f['rates'], '.1f')}; {_latencies(f)}; CPU seconds of nginx "
                f"{fj(f['nginx_cpu_s'], '.2f')}, the load generator {fj(f['client_cpu_s'], '.2f')}, the server "
                f"process (job and SSE) {fj(f['server_cpu_s'], '.1f')}",
            )
        )
    return rows
