"""Issue 30 item 2, as a user meets it: while a job runs in one shell, `kbingest status` and
`kbingest jobs` in another show its ETA, and the line `--batch` rewrites on the terminal's stderr
leads with it (the stderr of the ingest is a pseudo-terminal, as in a shell)."""

import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time

from conftest import REPO, run_cli

DELAY = "0.05"  # seconds per text embedded by the fake embedder: the job lasts long enough to look at


def _read_all(fd: int, into: list[bytes]) -> None:
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # the other end closed (EIO on Linux)
            return
        if not data:
            return
        into.append(data)


def test_status_jobs_and_the_batch_terminal_line_show_the_jobs_eta(tmp_path, pages):
    home = tmp_path / "h"
    master, slave = pty.openpty()
    env = dict(os.environ, KBINGEST_FAKE_DELAY=DELAY)
    cmd = [sys.executable, "-m", "kbingest", "--home", str(home), "ingest", str(pages), "--kb", "docs", "--batch"]
    p = subprocess.Popen(
        [*cmd, "--embedder", "fake"], stdout=subprocess.PIPE, stderr=slave, text=True, cwd=str(REPO), env=env
    )
    os.close(slave)
    tty: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(master, tty), daemon=True)
    reader.start()
    try:
        assert p.stdout is not None
        job_id, deadline = None, time.monotonic() + 120
        for line in p.stdout:  # a script reads the JSON lines until the job has an ETA
            s = json.loads(line)
            job_id = s["job_id"]
            if s["status"] == "running" and s["eta_seconds"] is not None:
                break
            assert time.monotonic() < deadline and s["status"] in ("pending", "running"), s
        else:
            raise AssertionError("the job ended before it had an ETA: make DELAY longer")
        status = ""
        while time.monotonic() < deadline:  # the job store is written at its heartbeat
            status = run_cli("status", job_id, home=home).stdout
            if "ETA" in status.splitlines()[0]:
                break
            time.sleep(0.2)
        head = status.splitlines()[0]
        assert "running" in head and re.search(r"ETA \d+(s|m\d\ds)", head), status
        jobs = run_cli("jobs", home=home).stdout.splitlines()
        row = next(r.split() for r in jobs if r.startswith(job_id))
        assert row[2] == "running" and re.fullmatch(r"\d+(s|m\d\ds)", row[4]), jobs  # the ETA column
    finally:
        p.send_signal(signal.SIGTERM)  # a pause, as ctrl-c in the shell
        p.communicate(timeout=120)
        reader.join(timeout=10)
        os.close(master)
    screen = b"".join(tty).decode("utf-8", "replace")
    lines = [x.strip() for x in re.split(r"\r\x1b\[2K", screen) if x.strip().startswith("running")]
    assert any(re.match(r"running +\d+\.\d% ETA \d+(s|m\d\ds) ", x) for x in lines), screen[-2000:]
