"""The figures: FIGURES names each and the function that measures it (one module per figure, or per
few that share the same runs), returning rows for the results book. Goals are in the rows, so
results.md says pass/fail by itself."""

from __future__ import annotations

from typing import Callable

from bench import cost, mixed
from bench.chunking import fig_chunking
from bench.common import Row
from bench.context import Ctx
from bench.dashboard import fig_dashboard
from bench.docsites import fig_docsites
from bench.eta import fig_eta
from bench.formats import fig_formats
from bench.memory import fig_memory
from bench.metadata import fig_metadata
from bench.ocr import fig_ocr
from bench.pause import fig_pause
from bench.profile import fig_profile
from bench.retrieval import fig_retrieval
from bench.roofline import fig_roofline
from bench.runtime import fig_runtime
from bench.search_scale import fig_search_scale
from bench.serve import fig_serve, fig_serve_wrk
from bench.sources import fig_sources
from bench.store import fig_store
from bench.sweep import fig_sweep
from bench.throughput import fig_rerun, fig_throughput
from bench.watch import fig_watch
from bench.web import fig_web

__all__ = ["FIGURES", "Ctx"]

FIGURES: dict[str, Callable[[Ctx], list[Row]]] = {
    "chunking": fig_chunking,
    "runtime": fig_runtime,  # before throughput: it finds raw fastembed's best batch size
    "throughput": fig_throughput,
    "roofline": fig_roofline,  # issue 35: GEMM peaks, the runtime's breakdown, routes, vectors
    "rerun": fig_rerun,
    "memory": fig_memory,
    "pause": fig_pause,
    "store": fig_store,
    "dashboard": fig_dashboard,
    "watch": fig_watch,
    "serve": fig_serve,
    "serve_wrk": fig_serve_wrk,
    "sweep": fig_sweep,
    "profile": fig_profile,
    "formats": fig_formats,
    "ocr": fig_ocr,
    "search_scale": fig_search_scale,
    "metadata": fig_metadata,
    "cost": cost.rows,
    "mixed": mixed.rows,
    "eta": fig_eta,
    "retrieval": fig_retrieval,
    "docsites": fig_docsites,
    "sources": fig_sources,
    "web": fig_web,
}
