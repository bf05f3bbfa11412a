"""Test-wide switches.

No test may reach a real model API: every outbound network connection that is not to
loopback or a Unix socket fails the test. Tests use ``ScriptedModel`` through the Model seam;
tests marked ``live`` (never run in CI) may opt out with ``--allow-network``.

In CI (``CI`` set) no test may skip: whatever a test needs (a Docker engine, clang with
ThreadSanitizer, the external data in ../shared) ``.ci/run`` provides, so a skip there means
something is broken, and it fails the run instead of passing quietly.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket

import pytest

# A suite started in the background by a shell without job control (``cmd &`` in a script, as
# CI runners may) inherits SIGINT ignored, and one started under nohup SIGHUP; every bakeoff it
# starts would then rightly stay deaf to them. The tests that send them are about bakeoff in a
# terminal: this process, and through it every child, gets the defaults back.
for _sig, _default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGHUP, signal.SIG_DFL),
                       (signal.SIGTERM, signal.SIG_DFL)):
    if signal.getsignal(_sig) is signal.SIG_IGN:
        signal.signal(_sig, _default)

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


class RealNetworkCallError(AssertionError):
    """A test tried to reach the network (a real model call, most likely)."""


def _is_local(address) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX paths: the Docker socket, etc.
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self, address):
    if not _is_local(address):
        raise RealNetworkCallError(f"test tried to connect to {address!r}: real network calls are forbidden in tests")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if not _is_local(address):
        raise RealNetworkCallError(f"test tried to connect to {address!r}: real network calls are forbidden in tests")
    return _real_connect_ex(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):
    if host not in (None, "localhost") and not _is_local((host, 0)):
        raise RealNetworkCallError(f"test tried to resolve {host!r}: real network calls are forbidden in tests")
    return _real_getaddrinfo(host, *args, **kwargs)


def pytest_addoption(parser):
    parser.addoption("--allow-network", action="store_true", help="let tests marked live reach the network")


@pytest.fixture(autouse=True)
def _forbid_network(request, monkeypatch):
    if request.config.getoption("--allow-network") and request.node.get_closest_marker("live"):
        yield
        return
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded_connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", _guarded_getaddrinfo)
    # Keys in the developer's environment must not turn a test into a live call.
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "BAKEOFF_MODEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.skipped and os.environ.get("CI") and not hasattr(report, "wasxfail"):
        why = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where everything it needs is provided (.ci/run): {why}"
    return report


# Test files that must run alone: a Ray cluster that `ray stop` ends and a count of every
# container on the engine; a second Docker engine checked against the main one; signals whose
# leftovers are counted; and the C/OpenMP tests whose verdict or assertions rest on timings at
# all the machine's cores. `make test` runs them after the rest, which runs two files at a
# time (pytest-xdist, --dist loadfile).
SERIAL_FILES = {
    "test_batch_ray.py", "test_docker_host.py", "test_stopping.py", "test_differential_c.py",
    "test_trajectory.py", "test_examples.py", "test_cli_select.py",
}


# The files that take longest, longest first (measured with --durations on 2 cores). pytest-xdist
# hands files to workers in collection order, so these start first and the short files fill in
# around them; in alphabetical order a long file that starts last keeps one worker busy alone.
LONGEST_FIRST = (
    "test_cli_runs_no_deadlock.py", "test_cli_shared_places.py", "test_cli_run.py", "test_harness_sandboxed.py",
    "test_reliability_candidates.py", "test_cli_runs_finish.py", "test_c_spec_check.py", "test_bench_selection.py",
    "test_live_faults.py", "test_cuda_harness.py", "test_mpi_harness.py", "test_wheel.py", "test_cli_chat.py",
    "test_cli_demo.py", "test_session.py", "test_cli_batch.py", "test_race_check.py", "test_fanout_waves.py",
    "test_cli_bad_input.py",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SERIAL_FILES:
            item.add_marker(pytest.mark.serial)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order stays
