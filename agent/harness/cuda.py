"""Building and running a CUDA program where there may be no GPU.

On a machine with nvcc but no usable GPU, compiling must still succeed (so the build is
checked), and running must say plainly that there is no CUDA device instead of printing a
candidate's garbage or a cryptic runtime error. A tiny probe asks the CUDA runtime for its
device count before the program runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from bakeoff.agent.seams import ExecResult, Sandbox

PROBE = r"""
#include <cstdio>
#include <cuda_runtime.h>
int main() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) { printf("probe-error %d %s\n", (int)e, cudaGetErrorString(e)); return 0; }
  printf("probe-devices %d\n", n);
  return 0;
}
"""


def read_probe(probe: ExecResult) -> tuple[bool, str]:
    """(whether the CUDA runtime sees a device, why not when it does not) from the probe's run."""
    line = probe.stdout.strip().splitlines()[-1] if probe.stdout.strip() else ""
    if line.startswith("probe-devices") and line.split()[1:2] != ["0"]:
        return True, ""
    if line.startswith("probe-error"):
        return False, line.split(" ", 2)[2] if len(line.split(" ", 2)) > 2 else line
    return False, "the runtime reports 0 devices" if line else probe.summary(300)


class CudaRun(BaseModel):
    built: bool
    build_log: str = ""
    ran: bool = False
    no_device: bool = False
    message: str = ""  # what a person reads: why it did not run, or how it ended
    result: ExecResult | None = None


async def _local(cmd: str, cwd: Path, timeout: float) -> ExecResult:
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", cmd, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )
    timed_out = False
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = await proc.communicate()
    return ExecResult(exit_code=proc.returncode, stdout=out.decode(errors="replace")[-65536:],
                      stderr=err.decode(errors="replace")[-65536:], duration_s=time.monotonic() - start, timed_out=timed_out)


async def build_and_run_cuda(
    source: str,
    *,
    args: Sequence[str] = (),
    sandbox: Sandbox | None = None,
    nvcc: str = "nvcc",
    flags: Sequence[str] = ("-O2",),
    build_timeout: float = 300.0,
    run_timeout: float = 60.0,
) -> CudaRun:
    """Compile ``source`` with nvcc; run it only if the CUDA runtime sees a device."""
    tmp: Path | None = None
    sub = ".bakeoff-cuda"
    if sandbox is None:
        tmp = Path(tempfile.mkdtemp(prefix="bakeoff-cuda-"))

    async def write(name: str, text: str) -> None:
        if tmp is not None:
            (tmp / name).write_text(text)
        else:
            assert sandbox is not None
            await sandbox.write_file(f"{sub}/{name}", text)

    async def run(cmd: str, timeout: float) -> ExecResult:
        if tmp is not None:
            return await _local(cmd, tmp, timeout)
        assert sandbox is not None
        return await sandbox.exec(["bash", "-c", f"mkdir -p {sub} && cd {sub} && {cmd}"], timeout=timeout)

    try:
        await write("prog.cu", source)
        await write("probe.cu", PROBE)
        cc = shlex.join([nvcc, *flags])
        build = await run(f"{cc} -o prog prog.cu", build_timeout)
        if not build.ok:
            return CudaRun(built=False, build_log=build.summary(4000), message="nvcc could not build the program")
        probe = await run(f"{shlex.quote(nvcc)} -o probe probe.cu && ./probe", build_timeout)
        present, why = read_probe(probe)
        if not present:
            return CudaRun(built=True, build_log=build.summary(4000), no_device=True,
                           message=f"no CUDA device: the program built, but it was not run ({why})")
        result = await run("./prog " + " ".join(shlex.quote(a) for a in args), run_timeout)
        status = "timed out" if result.timed_out else f"exit {result.exit_code}"
        return CudaRun(built=True, build_log=build.summary(4000), ran=True, result=result, message=f"ran on a CUDA device: {status}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
