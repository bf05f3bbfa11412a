"""A real Ray cluster for the tests, on loopback only: a head node and a second node, each
started by ``ray start --block`` in a process group of its own, each with a resource label
of its own (``node_head``, ``node_b``) so a test can see where tasks ran and kill one node.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalCluster:
    address: str
    temp: Path
    nodes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start_node(self, label: str, *, head: bool = False, cpus: int = 2) -> None:
        common = ["--block", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", "--disable-usage-stats",
                  f"--resources={json.dumps({label: 1000})}", f"--node-manager-port={_free_port()}",
                  f"--object-manager-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
                  f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}"]
        if head:
            port = self.address.rsplit(":", 1)[1]
            args = ["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={self.temp}", *common]
        else:
            args = [f"--address={self.address}", *common]
        log = (self.temp.parent / f"{label}.log").open("wb")
        self.nodes[label] = subprocess.Popen([str(RAY), "start", *args], env=ENV, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)

    def wait_for(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = subprocess.run([str(RAY), "status", f"--address={self.address}"], env=ENV, capture_output=True,
                                  text=True, timeout=60)
            active = done.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
            if done.returncode == 0 and len(re.findall(r"^\s*1 node_[0-9a-f]+", active, re.M)) >= count:
                return
            time.sleep(1)
        raise RuntimeError(f"the test's Ray cluster did not reach {count} nodes")

    def node_labels(self) -> dict[str, str]:
        """Each live node's id (its first 8 hex digits, as bakeoff names nodes) -> its label."""
        code = ("import json, ray; ray.init(address=%r, log_to_driver=False); "
                "print(json.dumps({n['NodeID'][:8]: [k for k in n['Resources'] if k.startswith('node_')][0] "
                "for n in ray.nodes() if n['Alive']}))" % self.address)
        done = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"cannot list the test cluster's nodes: {done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def kill(self, label: str) -> None:
        """Kill one node: its raylet and every worker of it, at once."""
        proc = self.nodes.pop(label)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        # ray start --block's children may have their own groups: kill what is left of the node.
        for pid in _pids_with(f'"{label}"'):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        for label in list(self.nodes):
            self.kill(label)
        subprocess.run([str(RAY), "stop", "--force"], env=ENV, capture_output=True, timeout=120)


def _pids_with(needle: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(entry.name))
    return found


@contextlib.contextmanager
def local_cluster(root: Path, *, second_node: bool = True, cpus: int = 2) -> Iterator[LocalCluster]:
    """A head (``node_head``) and, by default, a second node (``node_b``) on 127.0.0.1, each
    offering ``cpus`` CPUs to Ray."""
    if not RAY.exists():
        raise RuntimeError("ray is not installed: pip install 'bakeoff[ray]' (CI installs the extra)")
    temp = root / "ray"
    temp.mkdir(parents=True)
    cluster = LocalCluster(address=f"127.0.0.1:{_free_port()}", temp=temp)
    try:
        cluster.start_node("node_head", head=True, cpus=cpus)
        cluster.wait_for(1)
        if second_node:
            cluster.start_node("node_b", cpus=cpus)
            cluster.wait_for(2)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
