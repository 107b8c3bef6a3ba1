"""Front-end preferences kept between runs in the home (settings.json): the dashboard's theme.

Small and forgiving: a missing, unreadable or malformed file reads as no settings; a write goes to
a new temp file (O_EXCL, never through a symlink) that replaces the old one atomically. A symlink
at settings.json is neither read through nor written through.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

SETTINGS_FILE = "settings.json"
MAX_BYTES = 64 * 1024
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def settings_path(root) -> str:
    return os.path.join(os.fspath(root), SETTINGS_FILE)


def read_settings(root) -> dict[str, Any]:
    try:
        fd = os.open(settings_path(root), os.O_RDONLY | _NOFOLLOW)
    except OSError:
        return {}
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}
        data = os.read(fd, MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        return {}
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def write_settings(root, updates: dict[str, Any]) -> dict[str, Any]:
    """Merge `updates` into the settings and write them atomically; returns the new settings."""
    merged = {**read_settings(root), **updates}
    path = settings_path(root)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(merged, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # replaces a symlink itself, never its target
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return merged
