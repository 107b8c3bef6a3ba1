"""`kbingest serve --notify URL`: POST a job's final status to each URL when it ends.

Bounded retries with exponential backoff; a notification that fails is logged, never raised: it
does not affect the job, whose final status is already stored.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional, Sequence

from kbingest.pipeline.models import JobStatusResponse

log = logging.getLogger("kbingest.notify")

ATTEMPTS = 4  # tries per URL
BACKOFF_S = 0.5  # first wait; doubled after each failed try (0.5, 1, 2: 3.5 s in all)
TIMEOUT_S = 5.0  # per try


class Notifier:
    """Sends in a daemon thread per job end, so the job's thread returns at once."""

    def __init__(
        self,
        urls: Sequence[str],
        attempts: Optional[int] = None,
        backoff_s: Optional[float] = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.urls = list(urls)
        self.attempts = max(1, attempts or ATTEMPTS)
        self.backoff_s = BACKOFF_S if backoff_s is None else backoff_s
        self._sleep = sleep
        self.delivered = 0
        self.failed = 0
        self._lock = threading.Lock()

    def job_ended(self, snap: JobStatusResponse) -> None:
        if not self.urls or not (snap.status.is_terminal):
            return
        body = snap.to_json().encode()
        threading.Thread(target=self._send_all, args=(snap.job_id, body), name="kbingest-notify", daemon=True).start()

    def _send_all(self, job_id: str, body: bytes) -> None:
        for url in self.urls:
            ok = self.send(url, body)
            with self._lock:
                if ok:
                    self.delivered += 1
                else:
                    self.failed += 1
            if not ok:
                log.warning("notification of job %s to %s failed after %d attempt(s)", job_id, url, self.attempts)

    def send(self, url: str, body: bytes) -> bool:
        import httpx

        wait = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                r = httpx.post(
                    url,
                    content=body,
                    timeout=TIMEOUT_S,
                    headers={"Content-Type": "application/json", "User-Agent": "kbingest-notify"},
                )
                if r.status_code < 300:
                    return True
                if 400 <= r.status_code < 500 and r.status_code not in (408, 429):
                    log.warning("notification to %s refused: HTTP %d", url, r.status_code)
                    return False  # the receiver will not take it: trying again does not help
                why = f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                why = f"{type(e).__name__}: {e}"
            log.info("notification to %s, attempt %d/%d: %s", url, attempt, self.attempts, why)
            if attempt < self.attempts:
                self._sleep(wait)
                wait *= 2
        return False
