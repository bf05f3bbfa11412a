"""Catching OpenMP data races by execution: ThreadSanitizer with LLVM's libomp and Archer.

Running a candidate many times at several thread counts finds a race only when the
scheduler happens to interleave the racing accesses; on two cores most races never show.
ThreadSanitizer finds them by happens-before analysis instead, whatever the timing. With
GCC's libgomp it reports false races (libgomp is not instrumented, so its barriers and
reductions are invisible to it); with clang, LLVM's libomp and the Archer tool
(``libarcher.so``, loaded through OMPT via ``OMP_TOOL_LIBRARIES``) OpenMP's synchronization
is understood: a correct ``reduction``, ``critical``, ``atomic`` or per-thread partials
combined after the region report nothing.

A missing toolchain (no ``clang++``, no ``libarcher.so``) never fails a candidate: the check
answers ``None`` and says why once.
"""

from __future__ import annotations

import functools
import glob
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from pydantic import BaseModel

from bakeoff.agent.seams import ExecResult

RunFn = Callable[[str, float], Awaitable[ExecResult]]
WriteFn = Callable[[str, str], Awaitable[None]]

TSAN_EXIT = 66
_SUMMARY_LINES = 24
# Flags that only change code generation for speed; the sanitized build uses its own.
_DROPPED_FLAG = re.compile(r"^-(O\d|Os|Ofast|march=.*|mtune=.*|flto.*|fopenmp.*|g\d?)$")
# Found on the machine that runs the check (a sandbox may differ from this one).
ARCHER_SH = 'A=$(ls /usr/lib/llvm-*/lib/libarcher.so /usr/lib/x86_64-linux-gnu/libarcher.so 2>/dev/null | tail -n 1)'


class RaceReport(BaseModel):
    """What ThreadSanitizer said about one run."""

    racy: bool
    summary: str = ""  # the first report's lines, capped
    count: int = 0  # reports on the candidate's code in all


def tsan_flags(flags: Sequence[str] = ()) -> list[str]:
    """The caller's flags (defines, includes, warnings) with the sanitizer's build settings."""
    kept = [f for f in flags if not _DROPPED_FLAG.match(f)]
    return [*kept, "-O1", "-g", "-fopenmp", "-fsanitize=thread"]


def tsan_cxx(flags: Sequence[str] = ()) -> str:
    std = [] if any(f.startswith("-std=") for f in flags) else ["-std=c++17"]
    return shlex.join(["clang++", *std, *tsan_flags(flags)])


def tsan_cc(flags: Sequence[str] = ()) -> str:
    return shlex.join(["clang", *tsan_flags([f for f in flags if not f.startswith("-std=c++")])])


def tsan_env(threads: int) -> str:
    """Shell prefix that runs a command under TSan + Archer at ``threads`` OpenMP threads
    (after ``ARCHER_SH`` has set ``$A``)."""
    opts = f"ignore_noninstrumented_modules=1 halt_on_error=0 exitcode={TSAN_EXIT} report_signal_unsafe=0"
    sym = shutil.which("llvm-symbolizer") or next(iter(sorted(glob.glob("/usr/lib/llvm-*/bin/llvm-symbolizer"))), "")
    if sym:
        opts += f" external_symbolizer_path={sym}"
    # A report is symbolized inside the candidate's call: the driver's per-call limit must
    # leave time for that, or a busy machine kills the run before the report is written.
    return f'OMP_NUM_THREADS={int(threads)} OMP_TOOL_LIBRARIES="$A" TSAN_OPTIONS={shlex.quote(opts)} BK_MIN_LIMIT=30 '


def parse_reports(stderr: str, only: Sequence[str] = ()) -> RaceReport:
    """Split TSan's output into reports; with ``only``, count a report only when it names one
    of those strings (e.g. the candidate's file), so a race elsewhere is not blamed on it."""
    blocks = re.split(r"^==================\s*$", stderr, flags=re.M)
    races = [b.strip() for b in blocks if "WARNING: ThreadSanitizer:" in b]
    if only:
        races = [b for b in races if any(s in b for s in only)]
    if not races:
        return RaceReport(racy=False)
    lines = [ln for ln in races[0].splitlines() if ln.strip()]
    summary = "\n".join(ln[:200] for ln in lines[:_SUMMARY_LINES])
    if len(races) > 1:
        summary += f"\n({len(races)} reports in all)"
    return RaceReport(racy=True, summary=summary, count=len(races))


@functools.cache
def tsan_available() -> tuple[bool, str]:
    """Whether this machine builds and runs an OpenMP program under TSan with Archer, and why not."""
    if shutil.which("clang++") is None:
        return False, "clang++ is not installed (Debian: apt-get install clang libomp-dev)"
    if not (glob.glob("/usr/lib/llvm-*/lib/libarcher.so") or glob.glob("/usr/lib/x86_64-linux-gnu/libarcher.so")):
        return False, "libarcher.so is not installed (Debian: apt-get install libomp-dev)"
    src = "#include <omp.h>\nint main(){int s=0;\n#pragma omp parallel for reduction(+:s)\nfor(int i=0;i<64;i++)s+=i;\nreturn s==2016?0:1;}\n"
    with tempfile.TemporaryDirectory(prefix="bakeoff-tsan-") as d:
        Path(d, "p.cpp").write_text(src)
        cmd = f"{tsan_cxx()} p.cpp -o p && {ARCHER_SH} && {tsan_env(2)}./p"
        try:
            res = subprocess.run(["bash", "-c", cmd], cwd=d, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            return False, f"the ThreadSanitizer probe did not run: {exc}"
    if res.returncode != 0:
        return False, f"a correct OpenMP program fails under clang++ -fsanitize=thread (exit {res.returncode}): {res.stderr[-300:]}"
    return True, "clang++ -fsanitize=thread with libomp and Archer"


async def tsan_run(build_cmd: str, run_cmd: str, *, run: RunFn, threads: int = 4, timeout: float = 60,
                   only: Sequence[str] = (), on_skip: Callable[[str], None] | None = None) -> RaceReport | None:
    """Build with ``build_cmd`` (using ``tsan_cxx``/``tsan_cc``), run ``run_cmd`` under TSan
    and Archer; ``None`` (and ``on_skip(why)``) when no verdict could be had."""
    def skip(why: str) -> None:
        if on_skip is not None:
            on_skip(why)

    built = await run(build_cmd, timeout)
    if not built.ok:
        missing = built.exit_code == 127 or "command not found" in built.stderr
        skip("clang++ is missing where the check runs" if missing else f"the sanitized build failed: {built.summary(400)}")
        return None
    res = await run(f"{ARCHER_SH} && [ -n \"$A\" ] || exit 127; {tsan_env(threads)}{run_cmd}", timeout)
    if res.exit_code == 127 and "ThreadSanitizer" not in res.stderr:
        skip("libarcher.so is missing where the check runs")
        return None
    report = parse_reports(res.stderr, only)
    if not report.racy and res.timed_out:
        skip(f"the sanitized run did not finish within {timeout:g}s")
        return None
    return report
