"""The target parallelism: the user's setting, else the CPUs a process may use (cgroup quota
and CPU affinity, not the host's core count)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from bakeoff.agent.config import load_settings
from bakeoff.agent.fanout.settings import FanOutSettings
from bakeoff.agent.harness.parallelism import (PROBE, cgroup_quota, core_sets, cpu_list, local_view, read_probe,
                                               target_parallelism)


def files(tree: dict[str, str]):
    return tree.get


V2 = "0::/user.slice/job-7\n"


def test_cgroup_v2_quota_is_the_tightest_on_the_path_to_the_root():
    tree = {
        "/sys/fs/cgroup/user.slice/job-7/cpu.max": "max 100000\n",  # no limit of its own
        "/sys/fs/cgroup/user.slice/cpu.max": "250000 100000\n",  # 2.5 CPUs for the slice
        "/sys/fs/cgroup/cpu.max": "800000 100000\n",
    }
    assert cgroup_quota(V2, files(tree)) == pytest.approx(2.5)
    assert cgroup_quota(V2, files({})) is None
    assert cgroup_quota(V2, files({"/sys/fs/cgroup/cpu.max": "max 100000"})) is None


def test_cgroup_v1_quota_and_a_container_whose_cgroup_is_mounted_at_the_root():
    text = "4:memory:/docker/abc\n1:cpu,cpuacct:/docker/abc\n"
    # Docker mounts the container's own cgroup at the root of the controller's hierarchy.
    tree = {"/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "150000\n",
            "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n"}
    assert cgroup_quota(text, files(tree)) == pytest.approx(1.5)
    unlimited = {"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n", "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n"}
    assert cgroup_quota("1:cpu:/\n", files(unlimited)) is None


def test_the_probes_output_decides_quota_against_affinity():
    quota = ("@nproc 16\n@file /proc/self/cgroup\n0::/box\n"
             "@file /sys/fs/cgroup/box/cpu.max\n400000 100000\n")
    target = read_probe(quota)
    assert target.threads == 4 and "cgroup CPU quota" in target.source and "16" in target.source
    # Affinity tighter than the quota (a cpuset of 2 CPUs): the affinity decides.
    target = read_probe(quota.replace("@nproc 16", "@nproc 2"))
    assert target.threads == 2 and target.source.startswith("CPU affinity (2 CPUs)")
    # A fractional quota rounds down, never below one thread.
    assert read_probe("@nproc 8\n@file /proc/self/cgroup\n0::/\n@file /sys/fs/cgroup/cpu.max\n50000 100000\n").threads == 1


def test_a_process_pinned_to_one_cpu_sees_one_and_so_does_the_shell_probe():
    code = ("import os, json; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
            "from bakeoff.agent.harness.parallelism import local_view; v = local_view(); "
            "print(json.dumps([v.threads, v.source]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    threads, source = json.loads(out.stdout)
    assert threads == 1 and source.startswith("CPU affinity (1 CPUs)")
    taskset = shutil.which("taskset")
    if taskset:
        pinned = subprocess.run([taskset, "-c", "0", "sh", "-c", PROBE], capture_output=True, text=True, check=True)
        assert read_probe(pinned.stdout).threads == 1
    assert local_view().threads >= 1


async def test_the_users_threads_win_and_say_where_they_came_from():
    target = await target_parallelism(3, setting="--threads")
    assert (target.threads, target.source) == (3, "--threads")
    assert (await target_parallelism(None)).threads == local_view().threads


async def test_a_sandbox_is_asked_for_its_own_view(tmp_path):
    from bakeoff.agent.seams import Workspace
    from bakeoff.sandboxes import create_sandbox

    (tmp_path / "ws").mkdir()
    sandbox = await create_sandbox(Workspace(path=tmp_path / "ws"), kind="local")
    try:
        target = await target_parallelism(None, sandbox=sandbox)
    finally:
        await sandbox.close()
    assert target.threads >= 1 and target.source.startswith("the sandbox's ")


def test_threads_is_a_setting_from_the_config_file_the_environment_and_the_flag(tmp_path):
    (tmp_path / "bakeoff.toml").write_text("threads = 16\n")
    settings, where = load_settings(tmp_path, {})
    assert settings.threads == 16 and where["threads"] == "bakeoff.toml"
    assert FanOutSettings.from_settings(settings).threads == 16
    settings, where = load_settings(tmp_path, {"BAKEOFF_THREADS": "8"}, {"threads": 4})
    assert settings.threads == 4 and where["threads"] == "flag --threads"
    settings, _ = load_settings(tmp_path, {"BAKEOFF_THREADS": "8"})
    assert settings.threads == 8


def test_disjoint_core_sets_for_timings_at_once():
    assert core_sets(list(range(16)), 8) == [list(range(8)), list(range(8, 16))]
    assert core_sets(list(range(16)), 5) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14]]
    assert core_sets([0, 1], 2) == [[0, 1]] and core_sets([0, 1], 4) == [[0, 1]]
    assert cpu_list([0, 1, 2, 3, 8, 10, 11]) == "0-3,8,10-11"
