"""The same tools inside a Docker sandbox: the probe, build, test and profile work there too.

Skipped only when no Docker engine answers (CI starts one).
"""

from __future__ import annotations

import asyncio
import os

import pytest

from bakeoff.agent.seams import ToolContext, Workspace
from bakeoff.tools.edit import Edit
from bakeoff.tools.edit_blocks import EditBlock
from bakeoff.tools.exec import Build, Run, Test, TestCounts
from bakeoff.tools.files import ListFiles, ReadFile, Search
from bakeoff.tools.profile import Profile
from tests.test_tools_support import c_project, python_project

try:
    from bakeoff.sandboxes.docker import DockerBackend, engine_available

    ENGINE_UP, ENGINE_WHY = engine_available()
except ImportError as exc:  # the docker SDK is a dependency; without it there is no engine to reach
    ENGINE_UP, ENGINE_WHY = False, str(exc)

pytestmark = [pytest.mark.docker, pytest.mark.skipif(not ENGINE_UP, reason=ENGINE_WHY)]

UNITTEST = """\
import unittest


class Calc(unittest.TestCase):
    def test_add(self):
        self.assertEqual(1 + 1, 2)

    def test_mul(self):
        self.assertEqual(2 * 3, 6)

    def test_wrong(self):
        self.assertEqual(2 + 2, 5)
"""


@pytest.fixture(scope="module")
def backend():
    shared = DockerBackend.shared()
    shared.ensure_image()
    return shared


async def _ctx(backend, path):
    return ToolContext(sandbox=await backend.create(Workspace(path=path)))


async def test_c_project_in_docker(backend, tmp_path):
    c_project(tmp_path)
    (tmp_path / "prog").write_text("ignored build output\n")
    # Older than the sources, so make rebuilds it even when archive mtimes round to seconds.
    os.utime(tmp_path / "prog", (0, 0))
    ctx = await _ctx(backend, tmp_path)
    try:
        listed = await ListFiles()(ListFiles.Args(), ctx)
        assert "prog" not in listed.files and "kernel.c" in listed.files
        found = await Search()(Search.Args(pattern=r"pragma omp", glob="*.c"), ctx)
        assert [(m.path, m.line) for m in found.matches] == [("kernel.c", 7)]
        assert (await ReadFile()(ReadFile.Args(path="kernel.c", start_line=7, end_line=7), ctx)).content.strip().startswith("#pragma")
        await Edit()(Edit.Args(blocks=[EditBlock("kernel.c", "reduction(+:s)", "reduction(+:s) schedule(static)")]), ctx)
        built = await Build()(Build.Args(), ctx)
        assert built.ok and built.system == "make", built.log
        tested = await Test()(Test.Args(), ctx)
        assert tested.ok and tested.counts == TestCounts(passed=1)
        sweep = await Profile()(Profile.Args(command="./prog 100000", threads=[1, 2], repeats=2, warmup=0), ctx)
        assert sweep.ok and [t.threads for t in sweep.sweep] == [1, 2]
        ran = await Run()(Run.Args(command="./prog 4"), ctx)
        assert ran.stdout.strip() == "14"
    finally:
        await ctx.sandbox.close()


async def test_python_project_in_docker(backend, tmp_path):
    python_project(tmp_path, failing=True)
    (tmp_path / "bench.py").write_text("def work():\n    return sum(range(100000))\n\nwork()\n")
    ctx = await _ctx(backend, tmp_path)
    try:
        built = await Build()(Build.Args(), ctx)
        assert built.ok and built.system == "python"
        # The sandbox image has no pytest: its tests run with a configured unittest command.
        await ctx.sandbox.write_file("tests/test_unit.py", UNITTEST)
        tested = await Test()(Test.Args(command="python3 -m unittest discover -s tests -p 'test_unit*.py'"), ctx)
        assert not tested.ok and tested.counts == TestCounts(passed=2, failed=1)
        prof = await Profile()(Profile.Args(command="python3 bench.py", repeats=1, warmup=0, hotspots=True), ctx)
        assert prof.ok, prof.error
        assert "work" in [h.function for h in prof.hotspots]
    finally:
        await asyncio.shield(ctx.sandbox.close())
