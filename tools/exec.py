"""Running things in a sandbox: ``run``, ``build`` and ``test``.

``build`` and ``test`` detect what the repository uses (make, CMake, plain C/C++ with OpenMP
or MPI, CUDA, Python; pytest, ctest, ``make test``) unless given a command, and turn the
logs into data: compiler errors as ``file:line:col: message`` records, test counts. A
command that fails is a result with ``ok=False``; only a call that cannot be made raises
``ToolError``.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import PurePosixPath
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from bakeoff.agent.seams import ExecResult, Sandbox, ToolContext
from bakeoff.tools.errors import ToolError
from bakeoff.tools.limits import LONGEST_COMMAND_S, SANDBOX_START_S
from bakeoff.tools.probe import PROBE_TIMEOUT_S, probe, probe_script

_JOBS = "$(nproc 2>/dev/null || echo 2)"
_C_EXTS = (".c",)
_CXX_EXTS = (".cc", ".cpp", ".cxx")


def cap_text(text: str, limit: int) -> str:
    """Head and tail of ``text`` within ``limit`` characters, with a marker where it was cut."""
    if len(text) <= limit:
        return text
    head = limit // 3
    tail = limit - head
    return text[:head] + f"\n[... {len(text) - limit} characters cut ...]\n" + text[-tail:]


def need_sandbox(ctx: ToolContext, tool: str) -> Sandbox:
    if ctx.sandbox is None:
        raise ToolError(f"{tool} needs a sandbox: commands never run in the user's tree")
    return ctx.sandbox


# --------------------------------------------------------------------------- run


class Run:
    name: ClassVar[str] = "run"
    description: ClassVar[str] = "Run a shell command in the sandbox's copy of the repository, with a timeout."
    # The command under its own timeout, which fires first; this limit is the backstop.
    time_limit_s: ClassVar[float | None] = LONGEST_COMMAND_S + SANDBOX_START_S

    class Args(BaseModel):
        model_config = ConfigDict(extra="forbid")

        command: str = Field(description="shell command, run from the repository root")
        timeout: float = Field(default=120.0, gt=0, le=LONGEST_COMMAND_S, description="seconds before the command is killed")
        env: dict[str, str] = Field(default_factory=dict, description="extra environment variables, e.g. OMP_NUM_THREADS")
        cwd: str | None = Field(default=None, description="directory relative to the repository root")

    class Result(BaseModel):
        ok: bool
        exit_code: int | None
        timed_out: bool
        oom_killed: bool
        duration_s: float
        stdout: str
        stderr: str
        truncated: bool

    async def __call__(self, args: Args, ctx: ToolContext) -> Result:
        sandbox = need_sandbox(ctx, self.name)
        res = await sandbox.exec(args.command, timeout=args.timeout, env=args.env or None, cwd=args.cwd)
        return self.Result(
            ok=res.ok, exit_code=res.exit_code, timed_out=res.timed_out, oom_killed=res.oom_killed,
            duration_s=res.duration_s, stdout=cap_text(res.stdout, 20_000), stderr=cap_text(res.stderr, 20_000),
            truncated=res.truncated or len(res.stdout) > 20_000 or len(res.stderr) > 20_000,
        )


# --------------------------------------------------------------------------- compiler errors


class CompilerError(BaseModel):
    """One diagnostic of a compiler, linker or build system."""

    file: str | None
    line: int | None = None
    column: int | None = None
    severity: Literal["error", "warning"] = "error"
    message: str

    def __str__(self) -> str:
        where = ":".join(str(x) for x in (self.file, self.line, self.column) if x is not None)
        return f"{where}: {self.severity}: {self.message}" if where else f"{self.severity}: {self.message}"


_GCC = re.compile(
    r"^(?P<file>[^\s:][^:\n]*?):(?P<line>\d+):(?:(?P<col>\d+):)?\s*(?P<sev>fatal error|error|warning):\s*(?P<msg>.+)$"
)
_NVCC = re.compile(
    r"^(?P<file>[^\s(][^(\n]*?)\((?P<line>\d+)\):\s*(?P<sev>error|warning)(?:\s*#[\w-]+)?\s*:\s*(?P<msg>.+)$"
)
_LINKER = re.compile(r"^(?:\S*ld(?:\.\w+)?: )?(?:(?P<file>[^:\n]+):\([^)]*\): )?(?P<msg>undefined reference to .+)$")
_QUOTES = str.maketrans("\u2018\u2019\u201c\u201d", "''\"\"")
_CMAKE = re.compile(r"^CMake Error at (?P<file>[^:\n]+):(?P<line>\d+)")


def parse_compiler_errors(output: str, root: str | None = None) -> list[CompilerError]:
    """Diagnostics in gcc/clang, nvcc, linker and CMake output, in order, without repeats.

    Paths under ``root`` (the sandbox's absolute workspace path) are made relative.
    """
    found: list[CompilerError] = []
    seen: set[tuple] = set()
    lines = output.splitlines()
    for i, raw in enumerate(lines):
        line = raw.strip()
        diag = None
        if m := _GCC.match(line) or _NVCC.match(line):
            sev = "warning" if m.group("sev") == "warning" else "error"
            col = m.groupdict().get("col")
            diag = CompilerError(
                file=m.group("file"), line=int(m.group("line")), column=int(col) if col else None,
                severity=sev, message=m.group("msg").strip(),
            )
        elif m := _LINKER.match(line):
            diag = CompilerError(file=m.group("file"), message=m.group("msg").strip())
        elif m := _CMAKE.match(line):
            detail = next((x.strip() for x in lines[i + 1:i + 4] if x.strip()), "")
            diag = CompilerError(file=m.group("file"), line=int(m.group("line")), message=detail or "CMake error")
        if diag is None:
            continue
        # gcc quotes with ‘’ under a UTF-8 locale; plain quotes read the same and grep alike.
        diag.message = diag.message.translate(_QUOTES)
        if root and diag.file and diag.file.startswith(root.rstrip("/") + "/"):
            diag.file = diag.file[len(root.rstrip("/")) + 1:]
        key = (diag.file, diag.line, diag.column, diag.severity, diag.message)
        if key not in seen:
            seen.add(key)
            found.append(diag)
    return found


# --------------------------------------------------------------------------- build


class BuildPlan(BaseModel):
    """What ``build`` decided to run, and why."""

    system: Literal["command", "make", "cmake", "cuda", "c", "python"]
    command: str
    binaries: list[str] = Field(default_factory=list)
    openmp: bool = False
    mpi: bool = False


def _q(paths: list[str]) -> str:
    return " ".join(shlex.quote(p) for p in paths)


def _plain_c_plan(sources: dict[str, dict]) -> BuildPlan:
    units = sorted(p for p in sources if p.endswith(_C_EXTS + _CXX_EXTS))
    cxx = any(p.endswith(_CXX_EXTS) for p in units)
    omp = any(sources[p]["omp"] for p in sources)
    mpi = any(sources[p]["mpi"] for p in sources)
    compiler = ("mpicxx" if cxx else "mpicc") if mpi else ("g++" if cxx else "gcc")
    # -fopenmp always: harmless without pragmas, and OpenMP hidden behind a header still builds.
    flags = "-O2 -fopenmp"
    libs = "" if cxx else " -lm"
    mains = [p for p in units if sources[p]["main"]]
    others = [p for p in units if p not in mains]
    if not mains:
        cmds = [f"{compiler} {flags} -c {_q([u])} -o {_q([str(PurePosixPath(u).with_suffix('.o'))])}" for u in units]
        return BuildPlan(system="c", command=" && ".join(cmds), openmp=omp, mpi=mpi)
    cmds, binaries = [], []
    for main in mains:
        binary = str(PurePosixPath(main).with_suffix(""))
        binaries.append(binary)
        cmds.append(f"{compiler} {flags} -o {_q([binary])} {_q([main] + others)}{libs}")
    return BuildPlan(system="c", command=" && ".join(cmds), binaries=binaries, openmp=omp, mpi=mpi)


def _cuda_plan(sources: dict[str, dict]) -> BuildPlan:
    cmds = ["mkdir -p build"]
    for unit in sorted(p for p in sources if p.endswith((".cu",) + _C_EXTS + _CXX_EXTS)):
        obj = "build/" + unit.replace("/", "_") + ".o"
        if unit.endswith(".cu"):
            cmds.append(f"nvcc -O2 -Xcompiler -fopenmp -c {_q([unit])} -o {obj}")
        else:
            compiler = "g++" if unit.endswith(_CXX_EXTS) else "gcc"
            cmds.append(f"{compiler} -O2 -fopenmp -c {_q([unit])} -o {obj}")
    omp = any(f["omp"] for f in sources.values())
    return BuildPlan(system="cuda", command=" && ".join(cmds), openmp=omp)


def plan_build(found: dict[str, Any], command: str | None = None) -> BuildPlan | None:
    """The build for a repository described by a ``detect`` probe; None when nothing builds."""
    sources: dict[str, dict] = found["sources"]
    if command:
        return BuildPlan(system="command", command=command)
    native = any(p.endswith((".cu",) + _C_EXTS + _CXX_EXTS) for p in sources)
    make = f"make -j{_JOBS}" if found["makefile"] else None
    cmake = "CMakeLists.txt" in found["markers"]
    cmake_cmd = f"cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j{_JOBS}"
    if native:
        if make:
            return BuildPlan(system="make", command=make)
        if cmake:
            return BuildPlan(system="cmake", command=cmake_cmd)
        if any(p.endswith(".cu") for p in sources):
            return _cuda_plan(sources)
        return _plain_c_plan(sources)
    if found["python"]:
        return BuildPlan(system="python", command="python3 -c <compile every .py file; no bytecode written>")
    if make:
        return BuildPlan(system="make", command=make)
    if cmake:
        return BuildPlan(system="cmake", command=cmake_cmd)
    return None


class Build:
    name: ClassVar[str] = "build"
    description: ClassVar[str] = (
        "Build the sandbox's repository: make, CMake, plain C/C++ (gcc/g++ -O2 -fopenmp, mpicc for "
        "MPI), CUDA (nvcc, compile only) or Python (syntax check), detected unless 'command' is given. "
        "Returns compiler errors as file:line:col records."
    )
    # Detecting the build (one probe), then the build command under its own timeout.
    time_limit_s: ClassVar[float | None] = PROBE_TIMEOUT_S + LONGEST_COMMAND_S + SANDBOX_START_S

    class Args(BaseModel):
        model_config = ConfigDict(extra="forbid")

        command: str | None = Field(default=None, description="build command to run instead of detecting one")
        timeout: float = Field(default=600.0, gt=0, le=LONGEST_COMMAND_S, description="seconds before the build is killed")

    class Result(BaseModel):
        system: str
        command: str
        ok: bool
        exit_code: int | None = None
        timed_out: bool = False
        duration_s: float = 0.0
        errors: list[CompilerError] = Field(default_factory=list)
        warnings: int = 0
        binaries: list[str] = Field(default_factory=list)
        log: str = ""

    async def __call__(self, args: Args, ctx: ToolContext) -> Result:
        sandbox = need_sandbox(ctx, self.name)
        # A configured command needs no detection (nor python3 in the sandbox).
        found = await probe(ctx, {"mode": "detect"}) if not args.command else None
        plan = BuildPlan(system="command", command=args.command) if args.command else plan_build(found or {})
        if plan is None:
            raise ToolError(
                "found nothing to build (no Makefile, CMakeLists.txt, C/C++/CUDA or Python sources): "
                "pass 'command' with the build command"
            )
        if plan.system == "python":
            res = await sandbox.exec(
                ["python3", "-c", probe_script(), json.dumps({"mode": "compile_python"})], timeout=args.timeout
            )
            return self._python_result(plan, res)
        res = await sandbox.exec(plan.command, timeout=args.timeout)
        diags = parse_compiler_errors(res.stdout + "\n" + res.stderr, root=(found or {}).get("root"))
        errors = [d for d in diags if d.severity == "error"]
        return self.Result(
            system=plan.system, command=plan.command, ok=res.ok, exit_code=res.exit_code, timed_out=res.timed_out,
            duration_s=res.duration_s, errors=errors[:50], warnings=len(diags) - len(errors),
            binaries=plan.binaries if res.ok else [], log=res.summary(4000),
        )

    def _python_result(self, plan: BuildPlan, res: ExecResult) -> Result:
        if not res.ok:
            return self.Result(
                system=plan.system, command=plan.command, ok=False, exit_code=res.exit_code,
                timed_out=res.timed_out, duration_s=res.duration_s, log=res.summary(4000),
            )
        answer = json.loads(res.stdout)
        errors = [CompilerError(file=f, line=ln or None, column=col or None, message=msg) for f, ln, col, msg in answer["errors"]]
        log = f"checked {answer['checked']} Python files\n" + "\n".join(str(e) for e in errors)
        return self.Result(
            system=plan.system, command=plan.command, ok=not errors, exit_code=1 if errors else 0,
            duration_s=res.duration_s, errors=errors, log=log.strip(),
        )


# --------------------------------------------------------------------------- test counts


class TestCounts(BaseModel):
    """Counts a test runner reported."""

    __test__ = False  # not a pytest class

    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.errors


_PYTEST_ITEM = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected|warnings?)\b")
_PYTEST_LINE = re.compile(r"(?:\b\d+ (?:passed|failed|errors?|skipped|xfailed|xpassed)\b.*|no tests ran) in [\d.]+\s*s")
_CTEST = re.compile(r"(\d+)% tests passed,\s*(\d+) tests? failed out of (\d+)")
_UNITTEST_RAN = re.compile(r"^Ran (\d+) tests? in", re.M)
_UNITTEST_END = re.compile(r"^(OK|FAILED)(?: \(([^)]*)\))?\s*$", re.M)
_PLAIN = re.compile(r"\b(\d+)\s+(passed|failed|errors?|skipped)\b", re.IGNORECASE)


def _pytest_counts(line: str) -> TestCounts:
    counts = TestCounts()
    for n, word in _PYTEST_ITEM.findall(line):
        k = int(n)
        if word in ("passed", "xpassed"):
            counts.passed += k
        elif word == "failed":
            counts.failed += k
        elif word.startswith("error"):
            counts.errors += k
        elif word in ("skipped", "xfailed"):
            counts.skipped += k
    return counts


def parse_test_counts(output: str) -> TestCounts | None:
    """Pass/fail counts from a test runner's output, or None when it reports none.

    Understands pytest's summary line ("3 passed, 1 failed, 2 skipped in 0.1s"), ctest's
    ("100% tests passed, 0 tests failed out of 5"), unittest's ("Ran 4 tests" ... "FAILED
    (failures=1)") and a plain "N passed, N failed" line. The last report in the output wins.
    """
    lines = output.replace("\r\n", "\n").splitlines()
    for line in reversed(lines):
        if _PYTEST_LINE.search(line):
            return _pytest_counts(line)
    ctest = _CTEST.findall(output)
    if ctest:
        _, failed, total = (int(x) for x in ctest[-1])
        return TestCounts(passed=total - failed, failed=failed)
    if "No tests were found" in output:
        return TestCounts()
    ran, end = _UNITTEST_RAN.findall(output), _UNITTEST_END.findall(output)
    if ran and end:
        details = dict(
            (k.strip(), int(v)) for k, v in (item.split("=") for item in end[-1][1].split(",") if "=" in item)
        )
        failed, errors = details.get("failures", 0), details.get("errors", 0)
        skipped = details.get("skipped", 0) + details.get("expected failures", 0)
        return TestCounts(
            passed=int(ran[-1]) - failed - errors - skipped, failed=failed, errors=errors, skipped=skipped
        )
    for line in reversed(lines):
        items = _PLAIN.findall(line)
        if items:
            counts = TestCounts()
            for n, word in items:
                word = word.lower()
                field = "errors" if word.startswith("error") else word
                setattr(counts, field, getattr(counts, field) + int(n))
            return counts
    return None


_PYTEST_FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.M)
_CTEST_FAILED = re.compile(r"^\s*\d+ - (\S+) \((?:Failed|Timeout|SEGFAULT|Subprocess aborted|Not Run|Exception)[^)]*\)", re.M)


def parse_failed_tests(output: str) -> list[str]:
    """Names of failing tests, where the runner lists them (pytest -q, ctest)."""
    names = _PYTEST_FAILED.findall(output) + _CTEST_FAILED.findall(output)
    return list(dict.fromkeys(names))[:100]


# --------------------------------------------------------------------------- test


def plan_tests(found: dict[str, Any], command: str | None = None) -> tuple[str, str] | None:
    """(system, command) for the tests of a repository described by a ``detect`` probe."""
    if command:
        return "command", command
    python_tests = [
        p for p in found["python"]
        if p.startswith("tests/") or "/tests/" in p or re.search(r"(^|/)(test_[^/]*|[^/]*_test)\.py$", p)
    ]
    pytest = ("pytest", "python3 -m pytest -q -p no:cacheprovider")
    native = any(p.endswith((".cu",) + _C_EXTS + _CXX_EXTS) for p in found["sources"])
    if python_tests and not native:
        return pytest
    for target in ("test", "check"):
        if target in found["make_targets"]:
            return "make", f"make {target}"
    if found["cmake_tests"]:
        return "ctest", (
            f"cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j{_JOBS} "
            "&& cd build && ctest --output-on-failure"
        )
    return pytest if python_tests else None


class Test:
    __test__ = False  # not a pytest class

    name: ClassVar[str] = "test"
    description: ClassVar[str] = (
        "Run the repository's tests in the sandbox: pytest, ctest, 'make test'/'make check', detected "
        "unless 'command' is given. Returns pass/fail counts and the names of failing tests."
    )
    # Detecting the test runner (one probe), then the tests under their own timeout.
    time_limit_s: ClassVar[float | None] = PROBE_TIMEOUT_S + LONGEST_COMMAND_S + SANDBOX_START_S

    class Args(BaseModel):
        model_config = ConfigDict(extra="forbid")

        command: str | None = Field(default=None, description="test command to run instead of detecting one")
        timeout: float = Field(default=600.0, gt=0, le=LONGEST_COMMAND_S, description="seconds before the tests are killed")
        env: dict[str, str] = Field(default_factory=dict, description="extra environment, e.g. OMP_NUM_THREADS")

    class Result(BaseModel):
        system: str
        command: str
        ok: bool
        exit_code: int | None = None
        timed_out: bool = False
        duration_s: float = 0.0
        counts: TestCounts | None = None
        failed_tests: list[str] = Field(default_factory=list)
        log: str = ""

    async def __call__(self, args: Args, ctx: ToolContext) -> Result:
        sandbox = need_sandbox(ctx, self.name)
        planned = ("command", args.command) if args.command else plan_tests(await probe(ctx, {"mode": "detect"}))
        if planned is None:
            raise ToolError(
                "found no tests (no pytest files, no 'test' or 'check' make target, no CTest): pass 'command' "
                "with the test command"
            )
        system, command = planned
        res = await sandbox.exec(command, timeout=args.timeout, env=args.env or None)
        output = res.stdout + "\n" + res.stderr
        return self.Result(
            system=system, command=command, ok=res.ok, exit_code=res.exit_code, timed_out=res.timed_out,
            duration_s=res.duration_s, counts=parse_test_counts(output), failed_tests=parse_failed_tests(output),
            log=res.summary(4000),
        )
