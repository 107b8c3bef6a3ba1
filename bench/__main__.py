"""`python -m bench`: run every benchmark, write bench/out/results.md (and results.json).

    python -m bench                 # the whole suite (30-60 min on 2 cores: the real model is slow)
    python -m bench --quick         # a smoke run: fewer pages and repetitions, a few minutes
    python -m bench --only chunking,pause --reps 5
    python -m bench --pages 40      # every figure on a 40-page subset of the corpus

Results of figures not run this time stay in the book from earlier runs (each row has its date).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

from bench.common import Book, Row, Workspace, corpus_root, log, machine_info
from bench.suite import FIGURES, Ctx


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description="kbingest benchmark suite")
    p.add_argument("--quick", action="store_true", help="fewer pages and repetitions: a smoke run of a few minutes")
    p.add_argument("--only", metavar="NAME[,NAME]", help=f"run only these: {', '.join(FIGURES)}")
    p.add_argument("--reps", type=int, metavar="N", help="repetitions of every figure (default: per figure)")
    p.add_argument("--pages", type=int, metavar="N", help="use N pages of the corpus (spread evenly) at most")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (corpus copies, homes, logs)")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.list:
        for name, fn in FIGURES.items():
            print(f"{name:12} {(fn.__doc__ or '').strip().splitlines()[0] if fn.__doc__ else ''}")
        return 0
    names = list(FIGURES)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in FIGURES]
        if unknown:
            print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(FIGURES)}", file=sys.stderr)
            return 2
    book = Book()
    book.start_run(machine_info(), argv)
    ws = Workspace(keep=args.keep)
    ctx = Ctx(ws=ws, book=book, quick=args.quick, reps_opt=args.reps, pages_opt=args.pages)
    log(f"corpus {corpus_root()} ({len(ws.all_pages)} pages); temp folder {ws.root}; results in {book.md_file}")
    t_all = time.perf_counter()
    failed = False
    try:
        for name in names:
            t0 = time.perf_counter()
            log(f"=== {name}")
            try:
                rows = FIGURES[name](ctx)
            except Exception as e:
                failed = True
                traceback.print_exc()
                rows = [
                    Row(
                        f"0.{name}",
                        f"{name}: the benchmark itself failed",
                        status="error",
                        note=f"{type(e).__name__}: {str(e)[:600]}",
                    )
                ]
            else:
                book.rows.pop(f"0.{name}", None)
            book.add(rows)
            log(f"=== {name} done in {time.perf_counter() - t0:.0f} s")
    finally:
        ws.cleanup()
    log(f"all done in {(time.perf_counter() - t_all) / 60:.1f} min; {book.md_file}")
    print(book.md_file.read_text())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
