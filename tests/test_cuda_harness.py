"""CUDA candidates on a machine without a GPU: built with nvcc, never called correct.

``bakeoff select`` with a ``.cu`` reference and a fan-out that edits a ``.cu`` file both go
through ``CudaHarness``: it finds no CUDA device, says so, fails the candidate that does not
build with nvcc's first error, and calls no candidate correct or faster. compute-sanitizer's
racecheck output is read by a pure function, tested on its own. nvcc is required (a skip
fails in CI); a machine that does see a device runs ``bench/cuda_check.sh`` instead.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bakeoff.agent.cli.main import app
from bakeoff.agent.events import EventBus
from bakeoff.agent.fanout.pipeline import fan_out
from bakeoff.agent.fanout.settings import FanOutServices, FanOutSettings
from bakeoff.agent.harness.cuda_harness import NO_DEVICE, RACECHECK_EXIT, read_racecheck
from bakeoff.agent.models.scripted import ScriptedModel, ScriptedResponse
from bakeoff.agent.seams import ExecResult, Workspace
from bakeoff.sandboxes.pool import SandboxPool

REFERENCE = """
__global__ void scale_kernel(int n, float a, float* y) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * y[i];
}

void scale(int n, float a, float* y) {
  float* d = nullptr;
  cudaMalloc(&d, n * sizeof(float));
  cudaMemcpy(d, y, n * sizeof(float), cudaMemcpyHostToDevice);
  scale_kernel<<<(n + 255) / 256, 256>>>(n, a, d);
  cudaMemcpy(y, d, n * sizeof(float), cudaMemcpyDeviceToHost);
  cudaFree(d);
}
"""

BUILDS = REFERENCE.replace("(n + 255) / 256, 256", "(n + 127) / 128, 128")
BROKEN = REFERENCE.replace("if (i < n) y[i] = a * y[i];", "if (i < n) y[i] = a * z[i];")


@pytest.fixture(autouse=True)
def _needs_nvcc_and_no_device():
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed")
    if shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0:
        pytest.skip("a CUDA device is visible: these tests are of a machine without one (run bench/cuda_check.sh)")


def test_select_with_a_cu_reference_builds_only_and_names_the_broken_candidate(tmp_path):
    paths = {}
    for name, src in {"ref": REFERENCE, "wider": BUILDS, "broken": BROKEN}.items():
        paths[name] = tmp_path / f"{name}.cu"
        paths[name].write_text(src)
    result = CliRunner().invoke(app, ["select", "--reference", str(paths["ref"]), "--candidate", str(paths["wider"]),
                                      "--candidate", str(paths["broken"]), "--entry", "scale", "--sandbox", "local",
                                      "--json"])
    assert result.exit_code == 1, result.output
    verdict = json.loads(result.output)
    assert verdict["winner"] is None and verdict["correct"] == [] and verdict["method"] == "none"
    assert verdict["reason"].startswith(f"no winner: {NO_DEVICE}")
    assert "none is called correct or faster" in verdict["reason"]
    rows = {r["candidate"]: r for r in verdict["rows"]}
    assert rows["broken"]["built"] is False
    assert rows["broken"]["note"].startswith("does not build:") and "\"z\" is undefined" in rows["broken"]["note"]
    assert rows["wider"]["correct"] is None and rows["wider"]["speedup"] is None
    assert rows["wider"]["note"] == "built; not run (no CUDA device)"


def test_the_table_says_no_cuda_device(tmp_path):
    (tmp_path / "ref.cu").write_text(REFERENCE)
    (tmp_path / "wider.cu").write_text(BUILDS)
    result = CliRunner().invoke(app, ["select", "--reference", str(tmp_path / "ref.cu"), "--candidate",
                                      str(tmp_path / "wider.cu"), "--entry", "scale", "--sandbox", "local"])
    assert result.exit_code == 1 and "no CUDA device" in " ".join(result.output.split()), result.output


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "scale.cu").write_text(REFERENCE)
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)
    return repo


def _edit(before: str, after: str) -> str:
    return f"scale.cu\n<<<<<<< SEARCH\n{before}\n=======\n{after}\n>>>>>>> REPLACE\n"


async def test_fan_out_on_a_cu_file_reports_build_only_gating(tmp_path):
    repo = _repo(tmp_path)
    launch = "  scale_kernel<<<(n + 255) / 256, 256>>>(n, a, d);"
    editor = ScriptedModel([
        # The first strategy's prompt names it: that candidate builds, the other does not.
        ScriptedResponse(match="omp-reduction", repeat=True,
                         text=_edit(launch, launch.replace("(n + 255) / 256, 256", "(n + 127) / 128, 128"))),
        ScriptedResponse(repeat=True, text=_edit("  if (i < n) y[i] = a * y[i];", "  if (i < n) y[i] = a * z[i];")),
    ])
    bus = EventBus()
    seen: list = []
    bus.subscribe(seen.append)
    from bakeoff.agent.fanout.strategies import strategies_for

    order = [s for s in strategies_for("cuda") if s.name in ("omp-reduction", "omp-simd")]
    services = FanOutServices(editors=[editor], tester=None, pool=SandboxPool(kind="local", max_concurrent=3),
                              workspace=Workspace(path=repo, commit="HEAD"), events=bus,
                              settings=FanOutSettings(strategies=order, rounds=1, first_wave=1.0, test_samples=0))
    result = await asyncio.wait_for(fan_out("make scale in scale.cu faster with CUDA", ["scale.cu"], 2,
                                            services=services, entry="scale"), timeout=600)
    assert result.winner is None and result.patch == "" and result.verdict.correct == []
    assert NO_DEVICE in result.verdict.reason, result.verdict.reason
    assert "none is called correct or faster" in result.verdict.reason
    assert "no CUDA device" in " ".join(result.report_table.split())
    by_strategy = {c.strategy: c for c in result.candidates}
    assert by_strategy["omp-reduction"].error is None and by_strategy["omp-reduction"].patch
    assert by_strategy["omp-simd"].error is not None  # nvcc's error: it never built
    assert any(e.kind == "cuda.no_device" for e in seen)


def test_racecheck_output_is_read():
    clean = ExecResult(exit_code=0, stdout="========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)\n")
    assert not read_racecheck(clean).racy
    hazard = ExecResult(exit_code=RACECHECK_EXIT, stdout=(
        "========= Error: Race reported between Write access at sum_kernel(int, const float *, float *)+0x1a0\n"
        "=========     and Read access at sum_kernel(int, const float *, float *)+0x1c0 [8 hazards]\n"
        "========= RACECHECK SUMMARY: 2 hazards displayed (2 errors, 0 warnings)\n"))
    report = read_racecheck(hazard)
    assert report.racy and report.count == 2
    assert report.summary.splitlines()[0].startswith("Error: Race reported between Write access")
    # The exit code alone (a summary cut off) still says racy.
    assert read_racecheck(ExecResult(exit_code=RACECHECK_EXIT, stdout="")).racy


# Host code in .cu files: the driver built by nvcc runs it without a GPU, so with detection
# faked the device path's building (the CUDA dialect), comparing, race check and timing are
# the real ones. The race check's compute-sanitizer is a stand-in on PATH that reports a
# hazard for binaries holding ``racy_marker``.
HOST_REF = """
__host__ __device__ inline float twice(float v) { return 2.0f * v; }
void double_all(int n, float* y) { for (int i = 0; i < n; ++i) y[i] = twice(y[i]); }
"""
HOST_RIGHT = "void double_all(int n, float* y) { for (int i = 0; i < n; ++i) y[i] += y[i]; }\n"
HOST_WRONG = "void double_all(int n, float* y) { for (int i = 1; i < n; ++i) y[i] += y[i]; }\n"
HOST_RACY = HOST_RIGHT + "void racy_marker() {}\n"
FAKE_SANITIZER = """#!/bin/sh
shift 4  # --tool racecheck --error-exitcode 86
bin="$1"
"$@" > /dev/null
if grep -aq racy_marker "$bin"; then
  echo "========= Error: Race reported between Write access at k()+0x10 and Read access at k()+0x20"
  echo "========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)"
  exit 86
fi
echo "========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)"
"""


@pytest.mark.slow
async def test_with_a_device_candidates_run_compare_racecheck_and_time(tmp_path, monkeypatch):
    from bakeoff.agent.harness.c_spec import infer_spec
    from bakeoff.agent.harness.c_timing import TimingOptions
    from bakeoff.agent.harness.cuda_harness import ONE_HOST_THREAD, CudaHarness, Device
    from bakeoff.agent.harness.sizing import SizingLimits

    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "compute-sanitizer").write_text(FAKE_SANITIZER)
    (tools / "compute-sanitizer").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:{__import__('os').environ['PATH']}")

    async def visible(self):
        return Device(True)

    monkeypatch.setattr(CudaHarness, "device", visible)
    spec = infer_spec(HOST_REF, "double_all").constraints
    spec["vars"]["n"]["medium"] = 4096  # the correctness runs' time limit follows the reference's: keep it clear of load
    harness = CudaHarness(HOST_REF, "double_all", constraints=spec,
                          timing=TimingOptions(sizing=SizingLimits(min_time_s=0.0)), cache_dir=tmp_path / "rt")
    try:
        tests = await harness.make_tests()
        assert tests and all(t.valid for t in tests)
        matrix = await harness.run_matrix({"right": HOST_RIGHT, "wrong": HOST_WRONG, "racy": HOST_RACY,
                                           "broken": HOST_RIGHT.replace("y[i]", "z[i]", 1)}, tests)
        assert matrix.passed("right") == frozenset(matrix.tests)
        assert "fail" in matrix.cells["wrong"].values()
        assert set(matrix.cells["racy"].values()) == {"flaky"} and "Race reported" in harness.races["racy"]
        assert "broken" in harness.build_logs and "error" in harness.build_logs["broken"]
        assert harness.threads == [1]
        timings = await harness.time({"right": HOST_RIGHT}, repeats=2)
        assert timings["right"].threads == 1 and timings["right"].speedup is not None
        assert harness.timing_setup.threads_source == ONE_HOST_THREAD
    finally:
        await harness.close()



async def test_without_the_gpus_handed_over_no_device_says_how(monkeypatch):
    """On a machine with NVIDIA devices that the sandbox was not given (``--no-gpus``), "no CUDA
    device" comes with what to do about it."""
    import bakeoff.agent.harness.cuda_harness as cuda_harness

    monkeypatch.setattr(cuda_harness, "gpu_devices", lambda: ["/dev/nvidia0"])
    harness = cuda_harness.CudaHarness(REFERENCE, "scale")
    try:
        device = await harness.device()
    finally:
        await harness.close()
    assert not device.present and "the sandbox was not given: pass --gpus" in device.why
    assert any("pass --gpus" in note for note in harness.notes)
