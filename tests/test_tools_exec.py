"""run, build and test on small real C/OpenMP and Python repositories; log parsers, table-driven."""

from __future__ import annotations

import pytest

from bakeoff.agent.seams import ToolContext
from bakeoff.tools.errors import ToolError
from bakeoff.tools.exec import (
    Build, Run, Test, TestCounts, parse_compiler_errors, parse_failed_tests, parse_test_counts, plan_build, plan_tests,
)
from tests.test_tools_support import c_project, make_sandbox, python_project, write_tree


@pytest.fixture
async def sandbox_of():
    opened = []

    async def open_(path):
        sandbox = await make_sandbox(path)
        opened.append(sandbox)
        return ToolContext(sandbox=sandbox)

    yield open_
    for sandbox in opened:
        await sandbox.close()


# --------------------------------------------------------------------------- parsers

COUNTS = [
    ("pytest -q", "....F.s\n3 passed, 1 failed, 2 skipped in 0.1s\n", TestCounts(passed=3, failed=1, skipped=2)),
    ("pytest banner", "===== 2 failed, 10 passed, 1 error, 3 warnings in 1.52s =====", TestCounts(passed=10, failed=2, errors=1)),
    ("pytest error only", "E   ImportError: no module\n1 error in 0.05s\n", TestCounts(errors=1)),
    ("pytest xfail/xpass", "== 4 passed, 1 xfailed, 1 xpassed, 2 deselected in 0.3s ==", TestCounts(passed=5, skipped=1)),
    ("pytest nothing ran", "no tests ran in 0.01s", TestCounts()),
    ("pytest last summary wins", "1 failed in 0.1s\nrerun\n2 passed in 0.1s\n", TestCounts(passed=2)),
    ("ctest all pass", "Test #5: e ....   Passed\n\n100% tests passed, 0 tests failed out of 5\n", TestCounts(passed=5)),
    ("ctest failures", "80% tests passed, 1 tests failed out of 5\n", TestCounts(passed=4, failed=1)),
    ("ctest none", "No tests were found!!!\n", TestCounts()),
    ("unittest ok", "....\n------\nRan 4 tests in 0.002s\n\nOK\n", TestCounts(passed=4)),
    ("unittest failures", "Ran 6 tests in 0.01s\n\nFAILED (failures=2, errors=1, skipped=1)\n", TestCounts(passed=2, failed=2, errors=1, skipped=1)),
    ("plain line", "running kernel tests\n7 passed, 2 failed\n", TestCounts(passed=7, failed=2)),
    ("plain capitalised", "Summary: 3 Passed, 0 Failed, 1 Skipped", TestCounts(passed=3, skipped=1)),
    ("nothing", "make: Nothing to be done for 'all'.\n", None),
]


@pytest.mark.parametrize("output,expected", [c[1:] for c in COUNTS], ids=[c[0] for c in COUNTS])
def test_parse_test_counts(output, expected):
    assert parse_test_counts(output) == expected


def test_parse_failed_tests():
    out = "FAILED tests/test_x.py::test_a - assert 1 == 2\nERROR tests/test_y.py\n" \
          "The following tests FAILED:\n\t  2 - kernel_small (Failed)\n\t  4 - kernel_big (Timeout)\n"
    assert parse_failed_tests(out) == ["tests/test_x.py::test_a", "tests/test_y.py", "kernel_small", "kernel_big"]


DIAGS = [
    ("gcc error with column", "kernel.c:7:12: error: 's' undeclared (first use in this function)",
     [("kernel.c", 7, 12, "error", "'s' undeclared (first use in this function)")]),
    ("gcc fatal error", "main.c:1:10: fatal error: missing.h: No such file or directory",
     [("main.c", 1, 10, "error", "missing.h: No such file or directory")]),
    ("gcc warning, no column", "src/a.c:3: warning: unused variable 'x'", [("src/a.c", 3, None, "warning", "unused variable 'x'")]),
    ("absolute path under the sandbox root", "/sandbox/repo/src/a.cpp:4:2: error: expected ';'",
     [("src/a.cpp", 4, 2, "error", "expected ';'")]),
    ("nvcc", 'saxpy.cu(12): error: identifier "y" is undefined', [("saxpy.cu", 12, None, "error", 'identifier "y" is undefined')]),
    ("nvcc numbered", "k.cu(3): warning #177-D: variable \"t\" was declared but never referenced",
     [("k.cu", 3, None, "warning", 'variable "t" was declared but never referenced')]),
    ("linker", "/usr/bin/ld: main.o: in function `main':\nmain.c:(.text+0x1e): undefined reference to `sum_squares'",
     [("main.c", None, None, "error", "undefined reference to `sum_squares'")]),
    ("cmake", "CMake Error at CMakeLists.txt:4 (add_executable):\n  Cannot find source file:\n\n    nope.c",
     [("CMakeLists.txt", 4, None, "error", "Cannot find source file:")]),
    ("repeats are dropped", "a.c:1:1: error: x\na.c:1:1: error: x\nIn file included from b.c:2:", [("a.c", 1, 1, "error", "x")]),
]


@pytest.mark.parametrize("output,expected", [c[1:] for c in DIAGS], ids=[c[0] for c in DIAGS])
def test_parse_compiler_errors(output, expected):
    got = parse_compiler_errors(output, root="/sandbox/repo")
    assert [(d.file, d.line, d.column, d.severity, d.message) for d in got] == expected


def _found(sources=None, python=(), markers=(), makefile=None, targets=(), cmake_tests=False):
    return {"root": "/w", "sources": sources or {}, "python": list(python), "markers": list(markers),
            "makefile": makefile, "make_targets": list(targets), "cmake_tests": cmake_tests}


def test_plan_build_picks_compilers():
    f = {"omp": False, "mpi": False, "main": False}
    mpi = plan_build(_found({"ring.c": {**f, "mpi": True, "main": True}}))
    assert mpi.system == "c" and mpi.command.startswith("mpicc -O2 -fopenmp -o ring ring.c") and mpi.mpi
    cxx = plan_build(_found({"a.cpp": {**f, "omp": True, "main": True}, "b.cc": f}))
    assert cxx.command == "g++ -O2 -fopenmp -o a a.cpp b.cc" and cxx.openmp and cxx.binaries == ["a"]
    cu = plan_build(_found({"k.cu": f, "host.c": f}))
    assert cu.system == "cuda" and "nvcc -O2 -Xcompiler -fopenmp -c k.cu -o build/k.cu.o" in cu.command
    assert plan_build(_found(makefile="Makefile", markers=["Makefile", "pyproject.toml"], python=["a.py"])).system == "python"
    assert plan_build(_found({"a.c": f}, markers=["CMakeLists.txt"])).system == "cmake"
    assert plan_build(_found(), command="ninja").command == "ninja"
    assert plan_build(_found()) is None


def test_plan_tests_order():
    f = {"omp": False, "mpi": False, "main": True}
    assert plan_tests(_found(python=["pkg/a.py", "tests/test_a.py"], makefile="Makefile", targets=["test"]))[0] == "pytest"
    assert plan_tests(_found({"a.c": f}, python=["tests/test_a.py"], makefile="Makefile", targets=["check"])) == ("make", "make check")
    assert plan_tests(_found({"a.c": f}, cmake_tests=True))[0] == "ctest"
    assert plan_tests(_found({"a.c": f})) is None


# --------------------------------------------------------------------------- real repos


async def test_run_command_and_failure(tmp_path, sandbox_of):
    ctx = await sandbox_of(write_tree(tmp_path, {"a.txt": "hi\n"}))
    ok = await Run()(Run.Args(command="cat a.txt; echo $GREETING", env={"GREETING": "hello"}), ctx)
    assert ok.ok and ok.stdout == "hi\nhello\n"
    bad = await Run()(Run.Args(command="echo oops >&2; exit 3"), ctx)
    assert not bad.ok and bad.exit_code == 3 and "oops" in bad.stderr
    slow = await Run()(Run.Args(command="sleep 5", timeout=0.5), ctx)
    assert slow.timed_out and not slow.ok


async def test_run_without_sandbox_is_refused(tmp_path):
    with pytest.raises(ToolError, match="needs a sandbox"):
        await Run()(Run.Args(command="true"), ToolContext(workspace=tmp_path))


async def test_build_and_test_c_openmp_with_makefile(tmp_path, sandbox_of):
    ctx = await sandbox_of(c_project(tmp_path))
    built = await Build()(Build.Args(), ctx)
    assert built.ok and built.system == "make" and built.command.startswith("make -j") and built.errors == []
    ran = await Run()(Run.Args(command="./prog 4", env={"OMP_NUM_THREADS": "2"}), ctx)
    assert ran.stdout.strip() == "14"
    tested = await Test()(Test.Args(), ctx)
    assert tested.ok and tested.system == "make" and tested.command == "make test"
    assert tested.counts == TestCounts(passed=1, failed=0)


async def test_build_plain_gcc_detects_openmp_and_programs(tmp_path, sandbox_of):
    ctx = await sandbox_of(c_project(tmp_path, makefile=False))
    built = await Build()(Build.Args(), ctx)
    assert built.ok and built.system == "c", built.log
    assert built.binaries == ["main", "test_kernel"]
    assert "gcc -O2 -fopenmp -o main main.c kernel.c -lm" in built.command
    ran = await Run()(Run.Args(command="./main 4 && ./test_kernel"), ctx)
    assert ran.ok and ran.stdout.splitlines() == ["14", "1 passed, 0 failed"]


async def test_build_error_is_parsed(tmp_path, sandbox_of):
    c_project(tmp_path)
    (tmp_path / "kernel.c").write_text((tmp_path / "kernel.c").read_text().replace("s += (double)i", "t += (double)i"))
    ctx = await sandbox_of(tmp_path)
    built = await Build()(Build.Args(), ctx)
    assert not built.ok and built.exit_code != 0
    first = built.errors[0]
    assert (first.file, first.line, first.severity) == ("kernel.c", 8, "error") and "'t' undeclared" in first.message
    assert "kernel.c:8:" in str(first)


async def test_build_with_configured_command(tmp_path, sandbox_of):
    ctx = await sandbox_of(c_project(tmp_path))
    built = await Build()(Build.Args(command="gcc -O2 -fopenmp -c kernel.c -o k.o"), ctx)
    assert built.ok and built.system == "command"
    assert (await Run()(Run.Args(command="test -s k.o"), ctx)).ok


async def test_cmake_build_and_ctest(tmp_path, sandbox_of):
    c_project(tmp_path, makefile=False)
    (tmp_path / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.10)\nproject(k C)\nfind_package(OpenMP REQUIRED)\nenable_testing()\n"
        "add_executable(test_kernel test_kernel.c kernel.c)\ntarget_link_libraries(test_kernel OpenMP::OpenMP_C)\n"
        "add_test(NAME kernel COMMAND test_kernel)\nadd_test(NAME broken COMMAND false)\n"
    )
    ctx = await sandbox_of(tmp_path)
    built = await Build()(Build.Args(), ctx)
    assert built.ok and built.system == "cmake", built.log
    tested = await Test()(Test.Args(), ctx)
    assert tested.system == "ctest" and not tested.ok
    assert tested.counts == TestCounts(passed=1, failed=1) and tested.failed_tests == ["broken"]


async def test_python_package_build_and_pytest_counts(tmp_path, sandbox_of):
    ctx = await sandbox_of(python_project(tmp_path))
    built = await Build()(Build.Args(), ctx)
    assert built.ok and built.system == "python" and "checked 3 Python files" in built.log
    no_bytecode = await Run()(Run.Args(command="find . -name __pycache__"), ctx)
    assert no_bytecode.ok and no_bytecode.stdout == ""  # the syntax check writes nothing
    tested = await Test()(Test.Args(), ctx)
    assert tested.ok and tested.system == "pytest"
    assert tested.counts == TestCounts(passed=2, skipped=1) and tested.failed_tests == []
    assert (await Run()(Run.Args(command="test ! -e .pytest_cache"), ctx)).ok  # no cache dir in the candidate's diff


async def test_python_failing_tests_and_syntax_error(tmp_path, sandbox_of):
    python_project(tmp_path, failing=True)
    ctx = await sandbox_of(tmp_path)
    tested = await Test()(Test.Args(), ctx)
    assert not tested.ok and tested.counts == TestCounts(passed=2, failed=1, skipped=1)
    assert tested.failed_tests == ["tests/test_wrong.py::test_wrong"]
    await ctx.sandbox.write_file("mini/calc.py", "def add(a, b):\n    return a +\n")
    built = await Build()(Build.Args(), ctx)
    assert not built.ok and [(e.file, e.line) for e in built.errors] == [("mini/calc.py", 2)]
    assert "SyntaxError" in built.errors[0].message


async def test_nothing_to_build_or_test_is_a_tool_error(tmp_path, sandbox_of):
    ctx = await sandbox_of(write_tree(tmp_path, {"notes.txt": "hello\n"}))
    with pytest.raises(ToolError, match="pass 'command'"):
        await Build()(Build.Args(), ctx)
    with pytest.raises(ToolError, match="found no tests"):
        await Test()(Test.Args(), ctx)
    custom = await Test()(Test.Args(command="echo '5 passed, 0 failed'"), ctx)
    assert custom.ok and custom.counts == TestCounts(passed=5)


@pytest.mark.slow
async def test_cuda_compiles_without_a_gpu(tmp_path, sandbox_of):
    ctx = await sandbox_of(write_tree(tmp_path, {
        "saxpy.cu": "__global__ void saxpy(int n, float a, float *x, float *y) {\n"
                    "    int i = blockIdx.x * blockDim.x + threadIdx.x;\n    if (i < n) y[i] = a * x[i] + y[i];\n}\n",
    }))
    built = await Build()(Build.Args(), ctx)
    assert built.system == "cuda" and built.ok, built.log
