"""The status front: the second process of `kbingest serve`, answering the polled kb status.

Fifty clients polling `GET .../kb/{kb_id}/status` ten times a second cost the process that runs
the job far more than the answer is worth: every poll takes the GIL from the job's threads and
goes through Python's per-request path (docs/serve.md, "Load"). So the server runs as two
processes, as nginx in front of an application would:

- the **front** (this module's `main`, a child of `kbingest serve`) accepts every connection on
  the server's socket. A whole, plain keep-alive GET of a kb status (`http_poll.simple_get`, the
  token and the Host checked by the same rules) is answered from the bytes the engine host last
  published for that kb. Anything else, however early or late in the connection, is handed over
  (a Host the rule refuses too: the engine host answers its 421): the connection itself (its
  descriptor, SCM_RIGHTS) with the bytes read from it so far, and the engine host's uvicorn takes
  it from there, for good. So every other endpoint, every error, SSE, bodies and
  their cap are the engine host's, answered exactly as without a front.
- the **engine host** (`FrontLink`, in the `kbingest serve` process) publishes the status of each
  kb the front polls: every STATUS_TTL_S when it changed, every REPUBLISH_S in any case, and stops
  when the front has not served it for WANT_S. The front serves a publication for FRESH_S at most;
  a poll with nothing fresh waits for the next publication (WAIT_S at most), then is handed over.

If the front dies, the engine host takes the socket and answers everything itself; if the engine
host dies, the front sees the end of their socket and exits (the port is free again). The front
ignores SIGINT: Ctrl-C reaches the engine host, which pauses its jobs and then stops the front.

Messages, one a datagram (SOCK_SEQPACKET): front -> engine `H<bytes read>` with one descriptor (a
connection handed over), `W<kb> <n>` (kb wanted; n polls answered since the last report); engine ->
front `S<kb>\n<JSON>` (kb status), `D<kb>` (the engine host answers that kb itself).
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from email.utils import formatdate
from typing import Any, Awaitable, Callable, Optional

from kbingest.app.http_poll import ENV_TOKEN, KB_STATUS, STATUS_TTL_S, authorized, host_allowed, simple_get

REPUBLISH_S = 0.5     # an unchanged status is published again this often
FRESH_S = 1.5         # the front serves a publication this long at most
WANT_S = 2.0          # the engine host stops publishing a kb the front has not served for this long
REPORT_S = 0.5        # how often the front reports the kbs it served
WAIT_S = 1.0          # a poll waits this long for a first publication, then its connection is handed over
IDLE_S = 5.0          # a connection with nothing from its client for this long is closed (uvicorn's keep-alive)
HEAD_S = 10.0         # a request head still not whole this long after its first byte: the connection is closed
MAX_HEAD = 8192       # a request head not whole within this many bytes is the engine host's
MAX_MSG = 256 * 1024  # the largest message; a bigger status is answered by the engine host
MAX_WANTED = 1024     # kbs published at once
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\ndate: %s\r\n\r\n"

log = logging.getLogger("kbingest.server")


def supported() -> bool:
    return hasattr(socket, "send_fds") and hasattr(socket, "SOCK_SEQPACKET")


# ---- the front process -----------------------------------------------------------------------------
class Front:
    """The front's state: the published statuses, the polls waiting for one, the counts to report."""

    def __init__(self, listen: socket.socket, ctrl: socket.socket, token: Optional[bytes],
                 hosts: Optional[frozenset[str]] = frozenset()) -> None:
        self.listen = listen
        self.ctrl = ctrl
        self.token = token
        self.hosts = hosts  # http_poll.host_rule: the Host names answered (None: any, a token guards)
        self.table: dict[str, list] = {}  # kb -> [arrived (monotonic), body, date second, whole response]
        self.waiting: dict[str, tuple[list[PollConnection], asyncio.TimerHandle]] = {}
        self.answered: dict[str, int] = {}
        self.connections: set[PollConnection] = set()
        self.loop: asyncio.AbstractEventLoop
        self.done: asyncio.Future

    async def run(self) -> None:
        self.loop = loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        loop.add_reader(self.ctrl.fileno(), self._on_ctrl)
        loop.add_signal_handler(signal.SIGTERM, self._finish)
        server = await loop.create_server(lambda: PollConnection(self), sock=self.listen)
        loop.call_later(REPORT_S, self._report)
        loop.call_later(1.0, self._sweep)
        await self.done
        server.close()
        for conn in list(self.connections):
            conn.transport.abort()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    # ---- what the engine host says
    def _on_ctrl(self) -> None:
        while True:
            try:
                msg = self.ctrl.recv(MAX_MSG + 1024, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                msg = b""
            if not msg:  # the engine host is gone
                self.loop.remove_reader(self.ctrl.fileno())
                return self._finish()
            if msg[:1] == b"S":
                kb, _, body = msg[1:].partition(b"\n")
                self.table[kb.decode()] = [time.monotonic(), body, 0, b""]
                self._settle(kb.decode(), answer=True)
            elif msg[:1] == b"D":
                self.table.pop(msg[1:].decode(), None)
                self._settle(msg[1:].decode(), answer=False)

    def _settle(self, kb: str, answer: bool) -> None:
        conns, timer = self.waiting.pop(kb, ((), None))
        if timer is not None:
            timer.cancel()
        for conn in conns:
            if answer:
                conn.resume()
            else:
                conn.hand_over()

    # ---- polls
    def response(self, kb: str) -> Optional[bytes]:
        """The whole HTTP response for kb's status, if a fresh publication is here."""
        entry = self.table.get(kb)
        if entry is None or time.monotonic() - entry[0] >= FRESH_S:
            return None
        second = int(time.time())
        if entry[2] != second:
            entry[2], entry[3] = second, HEAD % (len(entry[1]), formatdate(second, usegmt=True).encode()) + entry[1]
        self.answered[kb] = self.answered.get(kb, 0) + 1
        return entry[3]

    def wait(self, kb: str, conn: PollConnection) -> None:
        if kb in self.waiting:
            self.waiting[kb][0].append(conn)
            return
        self.waiting[kb] = ([conn], self.loop.call_later(WAIT_S, self._settle, kb, False))
        self._send(b"W%s 0" % kb.encode())

    def _report(self) -> None:
        answered, self.answered = self.answered, {}
        for kb, n in answered.items():
            self._send(b"W%s %d" % (kb.encode(), n))
        self.loop.call_later(REPORT_S, self._report)

    def _sweep(self) -> None:
        now = time.monotonic()
        for kb in [kb for kb, entry in self.table.items() if now - entry[0] >= FRESH_S]:
            del self.table[kb]  # no longer published
        for conn in list(self.connections):
            if conn.handing_over:
                continue
            if now - conn.heard > IDLE_S or (conn.buf and now - conn.began > HEAD_S):
                conn.transport.close()
        self.loop.call_later(1.0, self._sweep)

    def _send(self, msg: bytes, fds: tuple[int, ...] = ()) -> bool:
        try:
            socket.send_fds(self.ctrl, [msg], list(fds)) if fds else self.ctrl.send(msg)
            return True
        except OSError:
            return False


class PollConnection(asyncio.Protocol):
    """One client connection while the front holds it."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.transport: Any = None
        self.buf = b""
        self.heard = self.began = time.monotonic()  # the last bytes from the client; the first of this request
        self.handing_over = False
        self.tries = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.front.connections.add(self)

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.front.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.heard = time.monotonic()
        if self.buf:
            self.buf += data
        else:
            self.buf, self.began = data, self.heard
        self._serve()

    def _serve(self) -> None:
        buf = self.buf
        if b"\r\n\r\n" not in buf and len(buf) < MAX_HEAD and b"GET /".startswith(buf[:5]):
            return  # a poll still arriving
        request = simple_get(buf)
        m = KB_STATUS.fullmatch(request[0]) if request is not None else None
        if (m is None or not authorized(self.front.token, request[1], request[0])  # type: ignore[index]
                or not host_allowed(self.front.hosts, request[1])):  # type: ignore[index]
            return self.hand_over()
        kb = m.group(1)
        answer = self.front.response(kb)
        if answer is None:
            self.transport.pause_reading()
            return self.front.wait(kb, self)
        self.buf = b""
        self.transport.write(answer)

    def resume(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()
            self._serve()

    def hand_over(self) -> None:
        """The connection to the engine host, once what the front wrote on it has left."""
        t = self.transport
        if t is None:
            return
        self.handing_over = True
        t.pause_reading()
        if t.get_write_buffer_size() and self.tries < 1000:  # a client not reading: given 5 s
            self.tries += 1
            self.front.loop.call_later(0.005, self.hand_over)
            return
        fd = os.dup(t.get_extra_info("socket").fileno())
        try:
            self.front._send(b"H" + self.buf, (fd,))
        finally:
            os.close(fd)
        t.abort()


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m kbingest.app.status_front LISTEN_FD CTRL_FD HOSTS` (started by `kbingest serve` only;
    HOSTS: the Host names answered, comma-separated, or `*` for any: a token guards the server)."""
    args = argv if argv is not None else sys.argv[1:]
    listen_fd, ctrl_fd = int(args[0]), int(args[1])
    hosts = args[2] if len(args) > 2 else ""  # none given: only loopback addresses (the rest is handed over)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    token = os.environ.pop(ENV_TOKEN, "") or None
    front = Front(socket.socket(fileno=listen_fd), socket.socket(fileno=ctrl_fd), token.encode() if token else None,
                  None if hosts == "*" else frozenset(h for h in hosts.split(",") if h))
    try:
        import uvloop
        uvloop.run(front.run())
    except ImportError:
        asyncio.run(front.run())
    return 0


# ---- the engine host's end ---------------------------------------------------------------------
class FrontLink:
    """Starts the front on the server's listening socket, takes the connections it hands over
    (`adopt(sock, bytes read)`), publishes the kb statuses it wants (`status(kb)`: the JSON, or
    None when the engine host answers that kb itself), and calls `lost()` if the front dies."""

    def __init__(self, listen: socket.socket, token: Optional[str],
                 status: Callable[[str], Awaitable[Optional[bytes]]],
                 adopt: Callable[[socket.socket, bytes], None], lost: Callable[[], None], *,
                 hosts: Optional[frozenset[str]]) -> None:
        self.listen = listen
        self.token = token
        self.hosts = hosts  # the engine host's Host rule, which the front applies too
        self.status = status
        self.adopt = adopt
        self.lost = lost
        self.wanted: dict[str, float] = {}
        self.sent: dict[str, tuple[float, bytes]] = {}
        self.answers = 0  # polls the front answered (reported every REPORT_S)
        self.proc: Optional[subprocess.Popen] = None
        self.ctrl: Optional[socket.socket] = None
        self.stopping = False
        self._tasks: set[asyncio.Task] = set()

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {k: v for k, v in os.environ.items() if k != ENV_TOKEN}
        if self.token:
            env[ENV_TOKEN] = self.token  # not on the command line, where `ps` shows it
        fds = (self.listen.fileno(), theirs.fileno())
        try:
            rule = "*" if self.hosts is None else ",".join(sorted(self.hosts))
            self.proc = subprocess.Popen([sys.executable, "-m", "kbingest.app.status_front", *map(str, fds), rule],
                                         pass_fds=fds, env=env, stdin=subprocess.DEVNULL)
        except OSError:
            mine.close()
            raise
        finally:
            theirs.close()
        self.ctrl = mine
        threading.Thread(target=self._read, name="kbingest-status-front", daemon=True).start()
        self._spawn(self._publishing())

    async def stop(self) -> None:
        """The front stops (no new connection is taken), then the engine host shuts down as usual."""
        self.stopping = True
        if self.ctrl is not None:
            try:
                self.ctrl.shutdown(socket.SHUT_RDWR)  # the front sees the end; the reading thread wakes
            except OSError:
                pass
        if self.proc is not None:
            for _ in range(100):
                if self.proc.poll() is not None:
                    break
                await asyncio.sleep(0.05)
            else:
                self.proc.kill()
                self.proc.wait()
        for task in list(self._tasks):
            task.cancel()

    # ---- from the front (a thread: it blocks on the socket)
    def _read(self) -> None:
        assert self.ctrl is not None
        while True:
            try:
                msg, fds, _, _ = socket.recv_fds(self.ctrl, MAX_MSG, 1)
            except OSError:
                msg, fds = b"", []
            if not msg and not fds:
                code = None
                if not self.stopping and self.proc is not None:
                    try:
                        code = self.proc.wait(5)
                    except subprocess.TimeoutExpired:
                        pass
                return self._call(self._front_gone, code)
            if msg[:1] == b"H" and fds:
                self._call(self._handed_over, fds[0], msg[1:])
                continue
            for fd in fds:
                os.close(fd)
            if msg[:1] == b"W":
                self._call(self._want, msg[1:])

    def _call(self, fn: Callable, *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop has closed: the server is gone
            if fn == self._handed_over:
                os.close(args[0])

    def _handed_over(self, fd: int, data: bytes) -> None:
        sock = socket.socket(fileno=fd)
        if self.stopping:
            sock.close()
            return
        sock.setblocking(False)
        self.adopt(sock, data)

    def _front_gone(self, code: Optional[int]) -> None:
        if self.stopping:
            return
        log.warning("the status front (pid %s) exited with %s: this process answers every request now", self.pid, code)
        self.lost()

    # ---- to the front
    def _want(self, payload: bytes) -> None:
        name, _, n = payload.partition(b" ")
        self.answers += int(n) if n.isdigit() else 0
        kb = name.decode("ascii", "replace")
        if kb in self.wanted:
            self.wanted[kb] = time.monotonic()
        elif len(self.wanted) >= MAX_WANTED:
            self._send(b"D" + name)
        else:
            self.wanted[kb] = time.monotonic()
            self._spawn(self._publish(kb))

    async def _publishing(self) -> None:
        while True:
            await asyncio.sleep(STATUS_TTL_S)
            now = time.monotonic()
            for kb, wanted_at in list(self.wanted.items()):
                if now - wanted_at > WANT_S:
                    self.wanted.pop(kb, None)
                    self.sent.pop(kb, None)
                else:
                    await self._publish(kb)

    async def _publish(self, kb: str) -> None:
        body = await self.status(kb)
        name = kb.encode()
        if body is None or len(body) + len(name) + 2 > MAX_MSG:
            self.wanted.pop(kb, None)
            self.sent.pop(kb, None)
            self._send(b"D" + name)
            return
        now = time.monotonic()
        last = self.sent.get(kb)
        changed = last is None or (last[1] is not body and last[1] != body)
        if changed or now - last[0] >= REPUBLISH_S:  # type: ignore[index]
            if self._send(b"S%s\n%s" % (name, body)):
                self.sent[kb] = (now, body)

    def _send(self, msg: bytes) -> bool:
        try:
            assert self.ctrl is not None
            self.ctrl.send(msg, socket.MSG_DONTWAIT)
            return True
        except OSError:  # full (published again next time) or the front is gone (the reader hears of it)
            return False

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


if __name__ == "__main__":
    sys.exit(main())
