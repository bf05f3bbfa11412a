"""RELIABILITY.md on the local backend: runaway code (1-8), escape (9-13), leftovers (21).

Every test runs hostile commands for real and asserts the safe outcome; after each test no
process of any sandbox it made may be alive.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bakeoff.agent.seams import SandboxLimits, Workspace
from bakeoff.sandboxes.local import LocalSandbox, bwrap_status
from bakeoff.sandboxes.workspace import ENV_MARKER, processes_with_marker, reap_stale

FAST = SandboxLimits(wall_seconds=3, max_processes=64, memory_bytes=256 * 2**20,
                     output_bytes=64 * 1024, max_file_bytes=4 * 2**20, disk_bytes=16 * 2**20)

needs_bwrap = pytest.mark.skipif(not bwrap_status()[0], reason="bubblewrap cannot run here")


def survivors(sb: LocalSandbox) -> list[int]:
    """Processes of the sandbox still alive (by marker, and by uid when it has one)."""
    found = set(processes_with_marker(lambda v: v == sb.sandbox_id))
    if sb.uid is not None:
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    if os.stat(entry.path).st_uid == sb.uid:
                        state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
                        if state != "Z":
                            found.add(int(entry.name))
                except OSError:
                    pass
    return sorted(found)


@pytest.fixture
async def make(tmp_path: Path):
    """Makes sandboxes; at teardown closes them and checks that nothing of theirs survives."""
    made: list[LocalSandbox] = []
    (tmp_path / "ws").mkdir()

    async def factory(limits: SandboxLimits = FAST, **kwargs) -> LocalSandbox:
        sb = await LocalSandbox.create(Workspace(path=tmp_path / "ws"), limits, **kwargs)
        made.append(sb)
        return sb

    yield factory
    for sb in made:
        await sb.close()
        assert survivors(sb) == []
        assert not sb.dir.exists()


# --------------------------------------------------------------------------- runaway code


@pytest.mark.parametrize("bwrap", [pytest.param(True, marks=needs_bwrap), False])
async def test_1_infinite_loop_is_killed_at_the_wall_clock_limit(make, bwrap: bool) -> None:
    sb = await make(use_bwrap=bwrap)
    r = await sb.exec("while true; do :; done", timeout=1.5)
    assert r.timed_out and not r.oom_killed and not r.ok
    assert 1.4 < r.duration_s < 6
    assert survivors(sb) == []


@pytest.mark.parametrize("bwrap", [pytest.param(True, marks=needs_bwrap), False])
async def test_2_background_child_holding_stdout_does_not_hang_the_call(make, bwrap: bool) -> None:
    sb = await make(use_bwrap=bwrap)
    start = time.monotonic()
    r = await sb.exec("sleep 1000 & echo started; (sleep 999 >&2 &)", timeout=30)
    assert time.monotonic() - start < 5  # the drain time (0.5 s) plus teardown, far from 30 s
    assert r.exit_code == 0 and r.stdout == "started\n" and not r.timed_out
    assert survivors(sb) == []


@pytest.mark.parametrize("bwrap", [pytest.param(True, marks=needs_bwrap), False])
async def test_3_ignoring_sigterm_escalates_to_sigkill(make, bwrap: bool) -> None:
    sb = await make(use_bwrap=bwrap)
    r = await sb.exec("trap '' TERM; while true; do :; done", timeout=1.0)
    assert r.timed_out
    assert r.duration_s < 6
    if not bwrap:  # the shell itself ignored TERM, so only KILL ended it
        assert r.exit_code == 128 + signal.SIGKILL
    assert survivors(sb) == []


@pytest.mark.parametrize("bwrap, use_cgroup", [pytest.param(True, None, marks=needs_bwrap), (False, None),
                                               (False, False)], ids=["bwrap", "plain", "plain-rlimit-only"])
async def test_4_fork_bomb_hits_the_process_limit_and_spares_its_neighbours(make, bwrap: bool, use_cgroup) -> None:
    bomb = await make(use_bwrap=bwrap, use_cgroup=use_cgroup)
    neighbour = await make(use_bwrap=bwrap, use_cgroup=use_cgroup)
    bombing = asyncio.create_task(bomb.exec("bomb() { bomb | bomb & }; bomb; sleep 5", timeout=2.5))
    await asyncio.sleep(0.5)
    calm = await neighbour.exec("for i in $(seq 40); do /bin/true || exit 1; done; echo fine", timeout=20)
    r = await bombing
    assert calm.ok and calm.stdout == "fine\n"
    assert r.timed_out or r.exit_code != 0
    assert "Resource temporarily unavailable" in r.stderr  # fork() failed at the limit
    assert r.duration_s < 6
    assert survivors(bomb) == []
    await bomb.close()
    assert not bomb.dir.exists()


@needs_bwrap
async def test_5_a_thousand_openmp_threads_fail_cleanly(make) -> None:
    sb = await make(use_bwrap=True)
    await sb.write_file("t.c", textwrap.dedent("""\
        #include <omp.h>
        #include <stdio.h>
        int main(void) {
            int n = 0;
            #pragma omp parallel
            {
                #pragma omp atomic
                n++;
            }
            printf("threads=%d\\n", n);
            return 0;
        }
    """))
    built = await sb.exec("gcc -fopenmp -O1 t.c -o t", timeout=30)
    assert built.ok, built.summary()
    r = await sb.exec("./t", env={"OMP_NUM_THREADS": "1000"}, timeout=15)
    assert not r.timed_out
    if r.exit_code == 0:  # capped: the runtime gave it fewer threads
        assert int(r.stdout.split("=")[1]) < 1000
    else:
        assert "thread" in r.stderr.lower()
    assert survivors(sb) == []


MEMORY_BOMB = "python3 -c 'a = []\nwhile True: a.append(bytearray(10**7))'"


@pytest.mark.parametrize("use_cgroup", [None, False], ids=["cgroup-when-available", "watchdog"])
async def test_6_memory_bomb_is_reported_as_out_of_memory_not_timeout(make, use_cgroup) -> None:
    sb = await make(FAST.model_copy(update={"memory_bytes": 128 * 2**20}), use_cgroup=use_cgroup)
    if use_cgroup is False:
        assert sb.memory_enforcement == "watchdog"
    r = await sb.exec(MEMORY_BOMB, timeout=30)
    assert r.oom_killed and not r.timed_out and not r.ok, r.summary()
    assert "out of memory" in r.summary()
    assert (await sb.exec("echo alive")).stdout == "alive\n"


async def test_7_endless_output_is_capped_and_the_orchestrator_stays_small(make) -> None:
    sb = await make()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = await sb.exec("yes", timeout=1.5)
    assert r.timed_out and r.truncated
    assert r.stdout.startswith("y\ny\n") and "bytes cut" in r.stdout
    assert len(r.stdout) < FAST.output_bytes + 100
    big = await sb.exec("head -c 300000000 /dev/zero | tr '\\0' 'x'", timeout=30)
    assert big.ok and big.truncated and len(big.stdout) < FAST.output_bytes + 100
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024  # 300 MB went through; far less stayed


async def test_8_huge_file_and_many_files_fail_at_the_limits(make) -> None:
    sb = await make()
    big = await sb.exec("head -c 50000000 /dev/zero > big.bin", timeout=10)
    assert not big.ok
    assert (sb.work / "big.bin").stat().st_size <= FAST.max_file_bytes
    many = await sb.exec("python3 -c 'import os\nfor i in range(1000000): open(f\"f{i}\", \"w\").close()'", timeout=20)
    if sb.disk_capped:
        assert not many.ok and "No space left" in many.stderr
        assert len(os.listdir(sb.work)) < 10_000
        spill = await sb.exec("rm -f f*; for i in 1 2 3 4 5 6; do head -c 3000000 /dev/zero > part$i || exit 1; done")
        assert not spill.ok  # six files under the per-file limit still exceed the disk cap
    else:  # not root: only the per-file limit holds (documented in sandboxes/local.py)
        assert sb.isolation_warning is not None or os.geteuid() != 0
    host_dir = sb.dir
    await sb.close()
    assert not host_dir.exists()


# --------------------------------------------------------------------------- escape


@needs_bwrap
async def test_9_network_is_unreachable(make) -> None:
    sb = await make(use_bwrap=True)
    probes = {
        "tcp": "python3 -c 'import socket; socket.create_connection((\"1.1.1.1\", 53), timeout=2)'",
        "dns": "getent hosts example.com",
        "dev_tcp": "exec 3<>/dev/tcp/93.184.216.34/80",
        "udp": "python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b\"x\", (\"8.8.8.8\", 53))'",
    }
    for name, cmd in probes.items():
        r = await sb.exec(cmd, timeout=15)
        assert not r.ok and not r.timed_out, (name, r.summary())
        if name != "dns":  # refused at once by the empty network namespace, not after a timeout
            assert "Network is unreachable" in r.stderr, (name, r.summary())


@needs_bwrap
async def test_9_a_port_opened_inside_is_not_reachable_from_the_host(make) -> None:
    sb = await make(use_bwrap=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    listener = asyncio.create_task(sb.exec(
        f"python3 -c 'import socket,time; s=socket.socket(); s.bind((\"0.0.0.0\", {port})); s.listen(); "
        "print(\"listening\", flush=True); time.sleep(2)'", timeout=5))
    await asyncio.sleep(1.0)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    r = await listener
    assert r.stdout == "listening\n"  # it could listen, inside its own network only


@needs_bwrap
async def test_10_docker_socket_and_cloud_metadata_are_unreachable(make) -> None:
    sb = await make(use_bwrap=True)
    r = await sb.exec("ls -l /var/run/docker.sock /run/docker.sock", timeout=3)
    assert not r.ok and "docker.sock" in r.stderr
    meta = await sb.exec("python3 -c 'import socket; socket.create_connection((\"169.254.169.254\", 80), timeout=2)'",
                         timeout=15)
    assert not meta.ok and "Network is unreachable" in meta.stderr


@needs_bwrap
async def test_11_writes_outside_the_workspace_are_denied(make, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    target.chmod(0o777)
    sb = await make(use_bwrap=True)
    for cmd in ("echo x > /etc/bakeoff-probe", "echo x > /root/bakeoff-probe", "echo x > /usr/bakeoff-probe",
                f"echo x > {target}/planted", f"ln -s {target} link && echo x > link/planted"):
        r = await sb.exec(cmd, timeout=3)
        assert not r.ok, cmd
    assert not Path("/etc/bakeoff-probe").exists() and not Path("/root/bakeoff-probe").exists()
    assert not Path("/usr/bakeoff-probe").exists() and list(target.iterdir()) == []
    with pytest.raises(ValueError):
        await sb.write_file("link/planted", "x")
    assert list(target.iterdir()) == []
    home = await sb.exec("echo mine > $HOME/f && cat $HOME/f && echo t > $TMPDIR/t && cat $TMPDIR/t")
    assert home.stdout == "mine\nt\n"  # its own home and tmp are writable


@needs_bwrap
async def test_12_no_secret_is_visible_inside(make, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-bakeoff-test-secret")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_bakeoff_test_secret")
    sb = await make(use_bwrap=True)
    r = await sb.exec("env; cat /proc/self/environ /proc/1/environ; for p in /proc/[0-9]*; do cat $p/environ; done",
                      env={"ANTHROPIC_API_KEY": "sk-ant-bakeoff-secret", "OK_VAR": "visible"}, timeout=3)
    out = r.stdout + r.stderr
    assert "OK_VAR=visible" in out
    for secret in ("sk-bakeoff-test-secret", "ghp_bakeoff_test_secret", "sk-ant-bakeoff-secret"):
        assert secret not in out


@needs_bwrap
async def test_13_privilege_escalation_is_denied(make) -> None:
    sb = await make(use_bwrap=True)
    status = await sb.exec("grep -E '^(NoNewPrivs|CapEff|CapPrm|CapBnd)' /proc/self/status; id -u")
    assert "NoNewPrivs:\t1" in status.stdout
    assert "CapEff:\t0000000000000000" in status.stdout and "CapBnd:\t0000000000000000" in status.stdout
    assert status.stdout.split()[-1] != "0"
    for cmd in ("sudo -n true", "su -c true", "mount -t tmpfs none /mnt", "unshare -U true",
                "unshare -r true", "unshare -m true", "chroot / true",
                "python3 -c 'import os; os.setuid(0)'"):
        r = await sb.exec(cmd, timeout=3)
        assert not r.ok, cmd


async def test_12_13_without_bwrap_the_sandbox_still_drops_root_and_secrets(make, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-bakeoff-test-secret")
    sb = await make(use_bwrap=False)
    r = await sb.exec("env; cat /proc/1/environ /proc/$PPID/environ; id -u", timeout=3)
    assert "sk-bakeoff-test-secret" not in r.stdout + r.stderr
    if os.geteuid() == 0:
        assert r.stdout.split()[-1] != "0"
        assert not (await sb.exec("echo x > /etc/bakeoff-probe")).ok
        assert not Path("/etc/bakeoff-probe").exists()


# --------------------------------------------------------------------------- item 21

ORCHESTRATOR = """
import asyncio, sys
from pathlib import Path
from bakeoff.agent.seams import SandboxLimits, Workspace
from bakeoff.sandboxes.local import LocalSandbox

async def main():
    sandboxes = [await LocalSandbox.create(Workspace(path=Path(sys.argv[1])), SandboxLimits(wall_seconds=600),
                                           use_bwrap=(i % 2 == 0)) for i in range(4)]
    for sb in sandboxes:
        asyncio.ensure_future(sb.exec("sleep 1000"))
    await asyncio.sleep(0.8)
    print(" ".join(str(sb.dir) for sb in sandboxes), flush=True)
    await asyncio.sleep(1000)

asyncio.run(main())
"""


async def test_21_killed_orchestrator_leftovers_are_reaped_on_next_start(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    child = subprocess.Popen([sys.executable, "-c", ORCHESTRATOR, str(tmp_path / "ws")],
                             stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
    try:
        dirs = [Path(d) for d in child.stdout.readline().split()]
        assert len(dirs) == 4 and all(d.exists() for d in dirs)
        owner = str(child.pid)
        assert processes_with_marker(lambda v: v.startswith(owner + ":"))  # sleeps are running
    finally:
        child.kill()
        child.wait()
    removed = reap_stale()
    assert removed >= 4
    assert not any(d.exists() for d in dirs)
    await asyncio.sleep(0.1)
    assert processes_with_marker(lambda v: v.startswith(owner + ":")) == []
    mounts = Path("/proc/self/mounts").read_text()
    assert not any(str(d) in mounts for d in dirs)
    assert ENV_MARKER == "BAKEOFF_SANDBOX"
