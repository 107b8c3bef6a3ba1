"""A real uvicorn serving kbingest on 127.0.0.1: in this process (a thread), or as `kbingest serve`
in a subprocess (to be killed). Both on a free port; both stopped by their fixture."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import httpx
from conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadServer:
    """uvicorn in a thread of this process, on a socket bound before it starts (no port race)."""

    def __init__(self, home: Path, **cfg) -> None:
        import uvicorn

        from kbingest.app.server import ServerConfig, create_app, uvicorn_config
        from kbingest.pipeline.service import Service

        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.service = Service(home, cached_reads=True)
        self.app = create_app(self.service, ServerConfig(port=self.port, **cfg))
        self.host = self.app.app.state.host
        self.server = uvicorn.Server(uvicorn_config(self.app, port=self.port))  # as `kbingest serve` runs it
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.host.join(30)
        self.server.should_exit = True
        self.thread.join(20)
        self.sock.close()


class ProcessServer:
    """`python -m kbingest --home H serve --port P ...` in a subprocess."""

    def __init__(self, home: Path, *args: str, env: Optional[dict] = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        e = dict(os.environ)
        e.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kbingest", "--home", str(home), "serve", "--port", str(self.port), *args],
            cwd=str(REPO),
            env=e,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, self.proc.communicate()[1]
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "kbingest serve did not start"
            time.sleep(0.1)

    stderr = ""  # what the server wrote there, once it has stopped

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.stderr += self.proc.communicate(timeout=30)[1] or ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.stderr += self.proc.communicate(timeout=60)[1] or ""
            except subprocess.TimeoutExpired:
                self.kill()
