"""Local Ray clusters of our own, for the tests and the bench: a head and worker nodes on this machine,
each a `ray start --block` process we started, stopped by its process group (never `ray stop`,
which stops every Ray on the machine)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

NODE_OBJECT_STORE = 100 * 1024 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nodes(temp: str, nodes: int = 2, cpus: int = 2) -> tuple[str, list[subprocess.Popen], dict]:
    """`nodes` Ray nodes (the first the head), `cpus` logical CPUs each: the head's address, the
    processes, and the environment a driver needs to join (the cluster's own auth token)."""
    import secrets

    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    port = _free_port()
    ray_bin = str(Path(sys.executable).with_name("ray"))
    # no --node-ip-address 127.0.0.1: Ray maps a loopback address to the machine's own IP when it connects
    common = [
        "--num-cpus",
        str(cpus),
        "--block",
        "--disable-usage-stats",
        "--object-store-memory",
        str(NODE_OBJECT_STORE),
    ]
    quiet = dict(
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=dict(os.environ, **env)
    )
    # every port of its own: two clusters on one machine (a test's and a bench's) must not collide
    ports = [
        "--metrics-export-port",
        str(_free_port()),
        "--dashboard-agent-listen-port",
        str(_free_port()),
        "--dashboard-agent-grpc-port",
        str(_free_port()),
    ]
    procs = [
        subprocess.Popen(
            [
                ray_bin,
                "start",
                "--head",
                "--port",
                str(port),
                "--include-dashboard",
                "false",
                "--temp-dir",
                temp,
                *ports,
                *common,
            ],
            **quiet,
        )
    ]
    address = f"127.0.0.1:{port}"
    _wait_for(address, 1, env)
    for _i in range(1, nodes):
        ports = [
            "--metrics-export-port",
            str(_free_port()),
            "--dashboard-agent-listen-port",
            str(_free_port()),
            "--dashboard-agent-grpc-port",
            str(_free_port()),
        ]
        procs.append(subprocess.Popen([ray_bin, "start", "--address", address, *ports, *common], **quiet))
    _wait_for(address, nodes, env)
    return address, procs, env


def _wait_for(address: str, nodes: int, env: dict, timeout: float = 180) -> None:
    """Until the cluster has this many live nodes (asked from a short-lived driver)."""
    code = (
        "import ray,sys; ray.init(address=sys.argv[1], log_to_driver=False); "
        "print(sum(1 for n in ray.nodes() if n['Alive']))"
    )
    end = time.monotonic() + timeout
    res = None
    while time.monotonic() < end:
        try:
            res = subprocess.run(
                [sys.executable, "-c", code, address],
                capture_output=True,
                text=True,
                env=dict(os.environ, **env),
                timeout=60,
            )
        except subprocess.TimeoutExpired:
            continue
        if res.returncode == 0 and res.stdout.strip().isdigit() and int(res.stdout.strip()) >= nodes:
            return
        time.sleep(1)
    raise RuntimeError(
        f"the local Ray cluster at {address} has not {nodes} node(s) after {timeout:.0f} s: "
        f"{res.stderr[-500:] if res is not None else 'no answer'}"
    )


def stop_nodes(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        try:
            os.killpg(p.pid, signal.SIGTERM)  # the group `ray start` leads: its node's processes
        except ProcessLookupError:
            continue
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
