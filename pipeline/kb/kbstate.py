"""What a knowledge base holds, remembered between runs, so that an unchanged run opens no table.

A pass that opened the table writes HOME/kbstate/<key>.json when it ends: the table's signature,
its vector size and columns, and the documents it holds (doc_id -> version, source, chunks). The
next pass that finds the same signature takes the documents from the file and opens the table only
when a document changed: an unchanged run imports neither LanceDB nor the model (issue 12).

The signature is read from the table's `_versions` folder before the documents are scanned. Every
commit, by any writer, adds a manifest there, so a file whose signature no longer matches is never
trusted. The documents are those scanned (or remembered) when the pass began, with what the pass
wrote: right because the job holds the knowledge base's lock for the whole pass, so nothing else of
this home commits meanwhile. Only HOME/lancedb tables are remembered: a table at a --db location may
be written by another home, whose lock this home does not see.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from kbingest.pipeline.paths import Home, open_private

log = logging.getLogger("kbingest.engine")
FORMAT = 1
MAX_DOCS = 100_000  # a larger knowledge base is scanned each run: its file would cost what the scan does


@dataclass(frozen=True)
class StoredDoc:
    version: str
    source: str
    chunks: int


@dataclass(frozen=True)
class KbState:
    dim: int
    columns: tuple[str, ...]
    docs: dict[str, StoredDoc]


def _versions_dir(uri: str, kb: str) -> Path:
    return Path(uri) / f"{kb}.lance" / "_versions"


def signature(uri: str, kb: str) -> Optional[str]:
    """The table's newest manifests and their folder's mtime, or None (no table)."""
    d = _versions_dir(uri, kb)
    try:
        names = sorted(n for n in os.listdir(d) if n.endswith(".manifest"))
        mtime = os.stat(d).st_mtime_ns
    except OSError:
        return None
    if not names:
        return None
    return f"{len(names)}:{names[0]}:{names[-1]}:{mtime}"


def _file(home: Home, kb: str) -> Path:
    return home.root / "kbstate" / f"{kb}.json"  # kb: a validated name (no separators)


def read(home: Home, kb: str) -> Optional[KbState]:
    """The remembered state of HOME/lancedb's table `kb`, when the table is as it was when it was
    written; else None."""
    uri = str(home.lancedb_dir)
    sig = signature(uri, kb)
    if sig is None:
        return None
    try:
        fd = open_private(_file(home, kb), os.O_RDONLY)
        with os.fdopen(fd) as f:
            data = json.load(f)
        if data.get("format") != FORMAT or data.get("signature") != sig:
            return None
        docs = {d: StoredDoc(str(v), str(s), int(n)) for d, (v, s, n) in data["docs"].items()}
        return KbState(dim=int(data["dim"]), columns=tuple(data["columns"]), docs=docs)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing, unreadable, another format: the table is scanned


def write(home: Home, kb: str, dim: int, columns: list[str], docs: dict[str, StoredDoc]) -> None:
    """Remember what HOME/lancedb's table `kb` holds now (its signature read here)."""
    path = _file(home, kb)
    sig = signature(str(home.lancedb_dir), kb)
    if sig is None or len(docs) > MAX_DOCS:
        forget(home, kb)
        return
    data = {"format": FORMAT, "signature": sig, "dim": dim, "columns": columns,
            "docs": {d: [s.version, s.source, s.chunks] for d, s in docs.items()}}
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError as e:  # only an optimisation: the next run scans the table
        log.info("could not remember the state of knowledge base %s: %s", kb, e)
        with contextlib.suppress(OSError):
            tmp.unlink()


def forget(home: Home, kb: str) -> None:
    with contextlib.suppress(OSError):
        _file(home, kb).unlink()
