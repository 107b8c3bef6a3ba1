"""Where knowledge bases live: a folder (default HOME/lancedb) or an object store (s3://bucket/prefix).

`--db URI` (env KBINGEST_DB) names the location; `--db-option KEY=VALUE` passes LanceDB storage
options. Credentials and the endpoint come from the standard AWS environment variables at run time
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL) and are
never stored: a job records its URI and its non-secret options, so that resume writes to the same
place, and `--db-option` refuses keys that look like secrets. The job store stays local to the home;
the writer lock of a knowledge base lives with its table (`writer_lock`: a lock file beside it, or
a lease object on S3), so that two homes naming one location never write a table at once.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional
from urllib.parse import urlparse

from kbingest.pipeline.errors import InvalidInput

ENV_DB = "KBINGEST_DB"
_SCHEMES = ("file", "s3")
_SECRET_KEY = re.compile(r"secret|token|password|passwd|credential|account_key|sas_key|private_key", re.I)
_OPTION_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,127}$")
_MAX_URI = 1024
# AWS environment variable -> LanceDB (object_store) storage option
_AWS_ENV = (
    ("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
    ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
    ("AWS_SESSION_TOKEN", "aws_session_token"),
    ("AWS_REGION", "aws_region"),
    ("AWS_DEFAULT_REGION", "aws_region"),
    ("AWS_ENDPOINT_URL", "aws_endpoint"),
    ("AWS_ENDPOINT_URL_S3", "aws_endpoint"),
)


class StorageError(InvalidInput, ValueError):
    """A location or option that cannot be used: the message is one line for the user."""


def parse_options(pairs: Optional[Iterable[str]]) -> dict[str, str]:
    """`KEY=VALUE` strings (from repeated --db-option) -> a dict; a clear error for anything else."""
    out: dict[str, str] = {}
    for p in pairs or ():
        key, sep, value = p.partition("=")
        key = key.strip()
        if not sep or not _OPTION_KEY.match(key):
            raise StorageError(f"--db-option wants KEY=VALUE (a key of letters, digits, '_', '.', '-'), got {p[:80]!r}")
        if _SECRET_KEY.search(key):
            raise StorageError(
                f"--db-option {key}: options are stored with the job, so secrets are refused; "
                "pass credentials in the AWS_* environment variables"
            )
        out[key] = value
    return out


def _check_uri(uri: str) -> str:
    if not uri or len(uri) > _MAX_URI or any(ord(c) < 32 for c in uri):
        raise StorageError(f"--db: not a usable location ({len(uri)} characters, or control characters)")
    u = urlparse(uri)
    scheme = u.scheme.lower() if len(u.scheme) > 1 else ""  # "C:" is a drive, not a scheme
    if scheme and scheme not in _SCHEMES:
        raise StorageError(
            f"--db {uri[:120]!r}: unsupported scheme {u.scheme!r}; use a folder, file:///path or s3://bucket/prefix"
        )
    if scheme == "s3":
        if not u.netloc or not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", u.netloc):
            raise StorageError(f"--db {uri[:120]!r}: an S3 location is s3://bucket/prefix with a valid bucket name")
        if u.query or u.fragment or ".." in u.path.split("/"):
            raise StorageError(f"--db {uri[:120]!r}: no query, fragment or '..' in an S3 location")
        return f"s3://{u.netloc}{u.path.rstrip('/')}"
    if scheme == "file":
        if u.netloc not in ("", "localhost"):
            raise StorageError(f"--db {uri[:120]!r}: a file URI names a local path (file:///path)")
        return str(Path(u.path).expanduser().absolute())
    return str(Path(uri).expanduser().absolute())


# LanceDB's caches per connection. Its defaults (6 GB of index, 1 GB of metadata) let a long job's
# process grow with every version it commits; bounded here. The index cache holds what a search
# reads of the ANN and full-text indexes (docs/scale-out.md: 1M rows need a few hundred MB warm).
INDEX_CACHE_BYTES = 1 << 30
METADATA_CACHE_BYTES = 64 << 20


@dataclass(frozen=True)
class KbLocation:
    """Where the knowledge bases of a job (or a search) live, and how to reach them."""

    uri: str  # an absolute folder, or s3://bucket/prefix
    options: Mapping[str, str] = field(default_factory=dict)  # non-secret LanceDB storage options

    @classmethod
    def resolve(cls, home, db: Optional[str] = None, options: Optional[Mapping[str, str]] = None) -> "KbLocation":
        """The location named by `db` (or KBINGEST_DB), else HOME/lancedb; validated."""
        db = db if db is not None else (os.environ.get(ENV_DB) or None)
        if not db:
            return cls(cls.default(home).uri, dict(options or {}))
        return cls(_check_uri(db), dict(options or {}))

    @classmethod
    def from_flags(cls, home, db: Optional[str], option_pairs: Optional[Iterable[str]]) -> "KbLocation":
        """The location given by --db / KBINGEST_DB and repeated --db-option KEY=VALUE."""
        return cls.resolve(home, db, parse_options(option_pairs))

    def job_fields(self, home) -> dict:
        """What a JobConfig records of this location: None for the default (it follows the home)."""
        return {"db": None if self.uri == str(home.lancedb_dir) else self.uri, "db_options": dict(self.options)}

    @classmethod
    def default(cls, home) -> "KbLocation":
        """HOME/lancedb, whatever KBINGEST_DB says."""
        return cls(str(home.lancedb_dir), {})

    @classmethod
    def of_job(cls, home, config) -> "KbLocation":
        """The location a job writes to: the one it recorded when it was created (so resume repeats
        it, whatever KBINGEST_DB says now), else HOME/lancedb."""
        db = getattr(config, "db", None)
        if not db:
            return cls.default(home)
        return cls.resolve(home, db, getattr(config, "db_options", None))

    @property
    def is_local(self) -> bool:
        return not self.uri.startswith("s3://")

    def storage_options(self) -> dict[str, str]:
        """What LanceDB gets: the AWS environment (read now, never stored), then the given options."""
        if self.is_local:
            return dict(self.options)
        out: dict[str, str] = {}
        for env, key in _AWS_ENV:
            if os.environ.get(env) and key not in out:
                out[key] = os.environ[env]
        if out.get("aws_endpoint", "").startswith("http://"):
            out["allow_http"] = "true"  # a local emulator or an in-cluster endpoint without TLS
        out.update(self.options)
        return out

    def connect(self):
        from kbingest.pipeline.kb.fastimport import import_lancedb

        lancedb = import_lancedb()
        if self.is_local:
            Path(self.uri).mkdir(parents=True, exist_ok=True, mode=0o700)
        session = lancedb.Session(
            index_cache_size_bytes=INDEX_CACHE_BYTES, metadata_cache_size_bytes=METADATA_CACHE_BYTES
        )
        return lancedb.connect(self.uri, storage_options=self.storage_options() or None, session=session)

    def writer_lock(self, kb: str, info: Optional[Mapping[str, str]] = None, on_lost=None):
        """The lock that keeps one writer of knowledge base KB here, whichever home writes it: a lock
        file beside the table in a folder, a lease object with an expiry on S3 (pipeline/locking.py).
        `info` (home, job) names the holder to whoever waits; `on_lost` is told if a lease is lost."""
        from kbingest.pipeline.locking import FolderWriterLock, S3Lease

        if self.is_local:
            return FolderWriterLock(self.uri, kb, dict(info or {}))
        return S3Lease(self, kb, dict(info or {}), on_lost=on_lost)

    def table_uri(self, table: str) -> str:
        """Where LanceDB keeps TABLE here: the Lance dataset `<uri>/<table>.lance`."""
        return f"{self.uri.rstrip('/')}/{table}.lance"

    def open_dataset(self, table: str):
        """TABLE as a Lance dataset (pylance alone: no LanceDB import, ~90 MiB less in a process
        that only compacts: docs/benchmarks.md, memory)."""
        import lance

        return lance.dataset(self.table_uri(table), storage_options=self.storage_options() or None)

    def exists(self) -> bool:
        """Whether there may be tables here (a local folder that is missing has none)."""
        return not self.is_local or Path(self.uri).exists()

    def __str__(self) -> str:
        return self.uri
