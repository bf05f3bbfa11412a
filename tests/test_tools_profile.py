"""profile and time_command with short real commands: structure of the timings, not speed."""

from __future__ import annotations

import pytest

from bakeoff.agent.seams import ToolContext
from bakeoff.tools.errors import ToolError
from bakeoff.tools.profile import CommandFailed, Profile, cprofile_command, parse_hotspots, time_command
from tests.test_tools_support import make_sandbox, write_tree

BENCH = """\
import sys


def slow_part(n):
    return sum(i * i for i in range(n))


def fast_part(n):
    return n


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    print(slow_part(n) + fast_part(n))


if __name__ == "__main__":
    main()
"""


@pytest.fixture
async def sandboxes(tmp_path):
    write_tree(tmp_path, {"bench.py": BENCH, "pkg/__init__.py": "", "pkg/__main__.py": BENCH})
    candidate = await make_sandbox(tmp_path)
    baseline = await make_sandbox(tmp_path)
    yield candidate, baseline
    await candidate.close()
    await baseline.close()


async def test_time_command_returns_seconds_and_raises_on_failure(sandboxes):
    sandbox, _ = sandboxes
    seconds = await time_command(sandbox, "sleep 0.05", env={"X": "1"}, timeout=10)
    assert 0.04 < seconds < 5
    with pytest.raises(CommandFailed) as info:
        await time_command(sandbox, "exit 4", timeout=10)
    assert info.value.result.exit_code == 4 and "exit 4" in str(info.value)


async def test_interleaved_against_baseline_command(sandboxes):
    sandbox, _ = sandboxes
    args = Profile.Args(command="python3 bench.py 2000", baseline_command="python3 bench.py 4000", repeats=3, warmup=1)
    result = await Profile()(args, ToolContext(sandbox=sandbox))
    assert result.ok and result.baseline == "baseline_command"
    timing = result.timing
    assert len(timing.baseline_s) == 3 and len(timing.candidate_s) == 3
    assert timing.low <= timing.speedup <= timing.high and result.median_s > 0


async def test_baseline_runs_in_its_own_sandbox(sandboxes):
    sandbox, baseline = sandboxes
    await baseline.write_file("bench.py", BENCH.replace("slow_part(n) + ", "slow_part(n * 5) + "))
    ctx = ToolContext(sandbox=sandbox, baseline_sandbox=baseline)
    result = await Profile()(Profile.Args(command="python3 bench.py", repeats=2, warmup=0), ctx)
    assert result.ok and result.baseline == "baseline_sandbox" and result.baseline_command == "python3 bench.py"
    assert len(result.timing.baseline_s) == 2 and result.timing.speedup > 0


async def test_thread_sweep_gives_one_timing_per_count(sandboxes):
    sandbox, _ = sandboxes
    command = 'case "$OMP_NUM_THREADS" in 1|2|3) ;; *) exit 1 ;; esac'
    result = await Profile()(Profile.Args(command=command, threads=[1, 2, 3], repeats=2, warmup=0), ToolContext(sandbox=sandbox))
    assert result.ok, result.error
    assert result.baseline == "one_thread" and [t.threads for t in result.sweep] == [1, 2, 3]
    assert all(len(t.candidate_s) == 2 and len(t.baseline_s) == 2 for t in result.sweep)
    assert result.timing in result.sweep


async def test_sweep_passes_thread_count_to_the_command(sandboxes):
    sandbox, _ = sandboxes
    # Fails unless OMP_NUM_THREADS really is 4 for the candidate side.
    command = 'test "$OMP_NUM_THREADS" = 4'
    ok = await Profile()(Profile.Args(command=command, baseline_command="true", threads=[4], repeats=1, warmup=0), ToolContext(sandbox=sandbox))
    assert ok.ok and ok.sweep[0].threads == 4
    bad = await Profile()(Profile.Args(command=command, threads=[2], repeats=1, warmup=0), ToolContext(sandbox=sandbox))
    assert not bad.ok and "failed while being timed" in bad.error


async def test_repeats_without_baseline(sandboxes):
    sandbox, _ = sandboxes
    result = await Profile()(Profile.Args(command="true", repeats=4, warmup=0), ToolContext(sandbox=sandbox))
    assert result.ok and result.baseline == "none" and len(result.timing.candidate_s) == 4
    assert result.timing.speedup is None and result.timing.baseline_s == []


async def test_failing_command_is_a_result_not_an_exception(sandboxes):
    sandbox, _ = sandboxes
    result = await Profile()(Profile.Args(command="python3 missing.py", repeats=2), ToolContext(sandbox=sandbox))
    assert not result.ok and "missing.py" in result.error and result.timing is None


@pytest.mark.parametrize("command", ["python3 bench.py 30000", "python3 -m pkg 30000"])
async def test_python_hotspots(sandboxes, command):
    sandbox, _ = sandboxes
    result = await Profile()(Profile.Args(command=command, repeats=1, warmup=0, hotspots=True, top=8), ToolContext(sandbox=sandbox))
    assert result.ok, result.error
    names = [h.function for h in result.hotspots]
    assert "slow_part" in names and len(result.hotspots) <= 8
    slow = next(h for h in result.hotspots if h.function == "slow_part")
    assert slow.file.endswith(("bench.py", "__main__.py")) and not slow.file.startswith("/") and slow.calls == 1
    cums = [h.cumulative_s for h in result.hotspots]
    assert cums == sorted(cums, reverse=True)
    listing = await sandbox.exec("ls -a")
    assert ".prof" not in listing.stdout  # the profile data went to a temp file, not the repo


def test_hotspots_need_a_python_command():
    with pytest.raises(ToolError, match="need a Python command"):
        cprofile_command("./prog 100", 10)
    assert '-m cProfile -o "$prof" -m pkg.main --n 3' in cprofile_command("python3 -u -m pkg.main --n 3", 5)
    assert parse_hotspots("no marker here") == []
