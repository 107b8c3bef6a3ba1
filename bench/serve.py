"""The serve figures: status polls against `kbingest serve` (Python clients, wrk)."""

from __future__ import annotations

from bench.common import Row, log
from bench.context import Ctx, fj, json_module


def fig_serve(ctx: Ctx) -> list[Row]:
    """kbingest serve under load: 50 clients polling status at 10 Hz + one SSE client, real model."""
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
    )  # the load generator niced (10) below the server: serve_load's default
    w = "" if generator == "pollers" else "w"
    by = "" if generator == "pollers" else ", the clients from wrk"
    load = f"{d['clients']} clients at {d['hz']:g} Hz + 1 SSE client, {d['pages']} pages ({d['chunks']} chunks){by}"
    cmd = f"python -m bench.serve_load{' --load-generator wrk' if w else ''}"
    rows = [
        Row(
            f"15.1{w}",
            f"serve: p99 latency of GET .../kb/{{kb}}/status under load ({load})",
            unit="ms",
            values=d["p99_per_run_ms"],
            op="<",
            target=50.0,
            goal="< 50 ms",
            note=f"`{cmd}`: {d['polls']} polls, p50 {d['p50_ms']:.1f} ms, p99 of all "
            f"{d['p99_ms']:.1f} ms, max {d['max_ms']:.0f} ms, {d['errors']} non-200; SSE events per job "
            f"{d['sse_events']}, final {d['sse_final']}; the same clients with no job running: p50 "
            f"{d['idle_p50_ms']:.1f} ms, p99 {d['idle_p99_ms']:.1f} ms; 1-min load average at each job's end "
            f"{fj(d['load_avg'], '.1f')} (2 cores)",
        ),
        Row(
            f"15.2{w}",
            f"serve: job throughput with the clients / without, same run, rotating ({load})",
            unit="x",
            values=d["ratios"],
            op=">=",
            target=0.95,
            goal=">= 0.95",
            note=f"chunks/s without {fj(d['rates_bare'], '.1f')}, with {fj(d['rates_loaded'], '.1f')} "
            f"(job wall time from the status, model load included); CPU seconds of the server "
            f"(job included) without {fj(d['server_cpu_bare_s'], '.1f')}, with "
            f"{fj(d['server_cpu_loaded_s'], '.1f')}; the load generator (same 2 cores, nice "
            f"{d['client_nice']}) {fj(d['client_cpu_s'], '.2f')}",
        ),
    ]
    if d.get("nofront_ratios"):
        rows.append(
            Row(
                f"15.2{w}n",
                f"serve, a diagnostic: job throughput with the same clients on a second `kbingest serve "
                f"--no-status-front` (polls answered in the job's process) / without, same run ({load})",
                unit="x",
                values=d["nofront_ratios"],
                note=f"`{cmd} --without-front-too`: chunks/s {fj(d['rates_nofront'], '.1f')}; {d['nofront_polls']} polls, "
                f"p99 per job {fj(d['nofront_p99_per_run_ms'], '.1f')} ms; CPU seconds of that server (job "
                f"included) {fj(d['nofront_server_cpu_s'], '.1f')}, the load generator "
                f"{fj(d['nofront_client_cpu_s'], '.2f')}",
            )
        )
    if d.get("floor_ratios"):
        rows.append(
            Row(
                f"15.2{w}f",
                f"serve, a diagnostic (the floor): job throughput with the same clients polling the same status "
                f"bytes served by nginx instead / without, same run, rotating ({load})",
                unit="x",
                values=d["floor_ratios"],
                note=f"`{cmd} --floor`: chunks/s {fj(d['rates_floor'], '.1f')}; {d['floor_polls']} "
                f"polls; CPU seconds of nginx {fj(d['floor_nginx_cpu_s'], '.2f')}, the load generator "
                f"{fj(d['floor_client_cpu_s'], '.2f')}, the server process (job and SSE) "
                f"{fj(d['floor_server_cpu_s'], '.1f')}",
            )
        )
    return rows
