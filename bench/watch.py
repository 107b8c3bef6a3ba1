"""The watch figures: a change found and searchable, in process and as a user."""

from __future__ import annotations

from bench.common import Row, goal_row, log
from bench.context import Ctx, fj, json_module


def fig_watch(ctx: Ctx) -> list[Row]:
    """Watch latency: a one-page edit's new sentence found by search, real model."""
    runs = ctx.reps(5, 3)
    log(f"watch latency: {runs} saves into a watched folder of 4 pages, real model")
    d = json_module("bench.watch_latency", "--runs", str(runs))
    return [
        goal_row(
            "9.1",
            "watch mode: save of a one-page change to its new sentence found by search (real model)",
            d["latencies"],
            "< 5 s",
            unit="s",
            note=f"`python -m bench.watch_latency`: {d['pages']} pages watched ({d['chunks']} chunks), a unique "
            f"sentence appended to one page per run, top-3 vector search polled every 0.2 s with the query "
            f"embedded before the save; the job picked each save up after {fj(d['pickups'], '.2f')} s (feed: "
            f"{d['quiet_s']:g} s quiet + {d['stable_s']:g} s stable), the rest is chunking, embedding the "
            f"changed chunks and the commit",
        ),
        _watch_as_a_user(runs),
    ]


def _watch_as_a_user(runs: int) -> Row:
    """Issue 12: the watch job in its own process, each poll a fresh `kbingest search` process."""
    d = json_module("bench.watch_cli", "--runs", str(runs))
    return goal_row(
        "9.2",
        "watch as a user: save to the new sentence found by a fresh `kbingest search` process "
        "(`ingest --watch` in its own process, real model)",
        d["latencies"],
        "< 3 s (issue 12)",
        unit="s",
        note=f"`python -m bench.watch_cli`: {d['pages']} pages; fresh searches per run {d['polls']}; one "
        f"fresh-process search (answered warm by the watch process) {fj(d['search_s'], '.2f')} s, "
        f"`python -c pass` {fj(d['python_s'], '.3f')} s in the same run",
    )
