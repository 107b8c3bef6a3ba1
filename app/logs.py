"""Logging of the front ends: the engine's warnings as one escaped line each on stderr."""

from __future__ import annotations

import logging
import os
import sys

from kbingest.pipeline.service import printable


def log_to_stderr() -> None:
    """Engine warnings (retries, a failed worker) as one escaped line each on stderr: no traceback
    (KBINGEST_DEBUG=1 shows them), no raw control characters from file names or exceptions."""

    class OneLine(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            text = printable(f"kbingest: {record.getMessage()}")
            if record.exc_info and os.environ.get("KBINGEST_DEBUG"):
                text += "\n" + self.formatException(record.exc_info)
            return text

    logger = logging.getLogger("kbingest")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(OneLine())
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False
