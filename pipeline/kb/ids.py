"""The one place that says how documents and chunks are identified.

- doc_id: from the document's path; keys every LanceDB predicate (hex only, never a raw path).
- doc_version: from its content hash and every setting that changes its chunks or vectors
  (JobConfig.version_key); equal versions mean the document can be skipped.
- chunk_id: from (source, content hash, position, version key).
- text_hash: of a chunk's text alone (stored with it): equal texts of the same model share one vector,
  within a job and across the knowledge base.
"""

from __future__ import annotations

import hashlib
import re

_HEX_RE = re.compile(r"^[0-9a-f]{32}(?:[0-9a-f]{32})?$")  # the ids below (32) or a text hash (64)


def _h(*parts: str) -> str:
    m = hashlib.sha256()
    for p in parts:
        b = p.encode("utf-8", "surrogateescape")
        m.update(len(b).to_bytes(8, "big"))
        m.update(b)
    return m.hexdigest()[:32]


def doc_id(source: str) -> str:
    return _h("doc", source)


def doc_version(content_hash: str, version_key: str) -> str:
    """version_key: JobConfig.version_key(), every setting that changes chunks or vectors."""
    return _h("version", content_hash, version_key)


def chunk_id(source: str, content_hash: str, position: int, version_key: str) -> str:
    return _h("chunk", source, content_hash, str(position), version_key)


def text_hash(text: str) -> str:
    """SHA-256 of the text's UTF-8, in hex: what LanceDB's `encode(sha256(text), 'hex')` gives for
    the stored text, so tables made before the column gain it in SQL (index.MIGRATIONS)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def is_key(value: str) -> bool:
    """True for the hex keys above: the only user-derived values ever placed in a LanceDB predicate."""
    return bool(_HEX_RE.match(value))


def in_predicate(column: str, keys: list[str]) -> str:
    """`column IN ('k1', 'k2')` over validated hex keys only."""
    bad = [k for k in keys if not is_key(k)]
    if bad:
        raise ValueError(f"refusing to build a predicate from non-key values: {bad[:3]!r}")
    return f"{column} IN ({', '.join(repr(k) for k in keys)})"
