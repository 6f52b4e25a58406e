"""deploy/stack: a port another process holds stops `up` with the port and the setting named."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from tests.conftest import REPO


def test_a_taken_port_is_named_with_its_setting(stack: None, tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        env = {**os.environ, "STACK_DIR": str(tmp_path), "STACK_SERVICES": "redis", "REDIS_PORT": str(port)}
        up = subprocess.run(
            [str(REPO / "deploy" / "stack"), "up"], env=env, capture_output=True, text=True, timeout=120
        )
    finally:
        holder.close()
    assert up.returncode == 1
    assert f"Redis cannot start: 127.0.0.1:{port} is taken by another process" in up.stderr, up.stderr
    assert "set REDIS_PORT to a free port below 32768" in up.stderr


def test_the_default_ports_lie_outside_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    env = subprocess.run(
        [str(REPO / "deploy" / "stack"), "env"], capture_output=True, text=True, check=True,
        env={k: v for k, v in os.environ.items() if not k.endswith("_PORT")},
    ).stdout  # fmt: skip
    ports = [int(part.split(":")[-1].split("/")[0]) for part in env.replace(",", " ").split() if ":" in part]
    assert ports and all(p < low for p in ports), env
