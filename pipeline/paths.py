"""Where things live under a home folder, and the validation of names that become paths."""
from __future__ import annotations

import os
import re
from pathlib import Path

from kbingest.pipeline.errors import InvalidInput

ENV_HOME = "KBINGEST_HOME"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class InvalidName(InvalidInput, ValueError):
    pass


def validate_name(value: str, what: str) -> str:
    """KB names and job ids become table names and file names: letters, digits, '.', '_', '-' only."""
    if not isinstance(value, str) or not _NAME_RE.match(value) or ".." in value:
        raise InvalidName(
            f"invalid {what} {value!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, with no '..' and no path separators"
        )
    return value


def default_home() -> Path:
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env)
    from platformdirs import user_data_dir

    return Path(user_data_dir("kbingest", appauthor=False))


class Home:
    """The layout of one home folder. Two homes never share anything."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser().absolute() if root else default_home().absolute()

    @property
    def store_file(self) -> Path:
        return self.root / "jobs.json"

    @property
    def store_lock_file(self) -> Path:
        return self.root / "jobs.json.lock"

    @property
    def engine_lock_file(self) -> Path:
        return self.root / "engine.lock"

    @property
    def locks_dir(self) -> Path:
        """Per-knowledge-base writer locks, queue places, the shared embedding budget (docs/queue.md)."""
        return self.root / "locks"

    def kb_lock_file(self, kb: str) -> Path:
        """The lock one writer of knowledge base `kb` holds (docs/queue.md): jobs on other knowledge
        bases run at the same time. `kb` is a validated name (no separators)."""
        return self.locks_dir / f"kb-{validate_name(kb, 'knowledge base name')}.lock"

    def queue_lock_file(self, job_id: str) -> Path:
        """Held by the process that owns a pending job while it waits: when that process dies, the
        kernel drops it and the job shows as interrupted, not stuck pending."""
        return self.locks_dir / f"wait-{validate_name(job_id, 'job id')}.lock"

    @property
    def lancedb_dir(self) -> Path:
        return self.root / "lancedb"

    def ensure(self) -> "Home":
        """Create the home readable by its owner only (0700), and tighten it if it exists."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        return self
