"""Small real repositories for the tool tests, and the sandbox they run in."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from agent.seams import ExecResult


class CopySandbox:
    """A minimal Sandbox double: a tmp copy of the workspace, commands as real subprocesses."""

    backend = "test-copy"

    def __init__(self, source: Path) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="bakeoff-tools-test-"))
        self.work = self.root / "work"
        shutil.copytree(source, self.work, symlinks=True)

    def _path(self, rel: str) -> Path:
        full = (self.work / rel).resolve()
        if not full.is_relative_to(self.work.resolve()):
            raise ValueError(f"{rel!r} escapes the sandbox")
        return full

    async def exec(
        self,
        cmd: str | Sequence[str],
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> ExecResult:
        environment = {**os.environ, **(env or {})}
        where = self._path(cwd) if cwd else self.work
        start = time.perf_counter()
        if isinstance(cmd, str):
            proc = await asyncio.create_subprocess_shell(
                cmd, cwd=where, env=environment, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True,
            )
        else:
            proc = await asyncio.create_subprocess_exec(
                *cmd, cwd=where, env=environment, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True,
            )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout or 120)
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            return ExecResult(exit_code=None, duration_s=time.perf_counter() - start, timed_out=True)
        return ExecResult(
            exit_code=proc.returncode, stdout=out.decode("utf-8", "replace"), stderr=err.decode("utf-8", "replace"),
            duration_s=time.perf_counter() - start,
        )

    async def write_file(self, path: str, content: str | bytes) -> None:
        full = self._path(path)
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_bytes(content.encode() if isinstance(content, str) else content)

    async def read_file(self, path: str) -> bytes:
        return self._path(path).read_bytes()

    async def diff(self) -> str:
        return ""

    async def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


async def make_sandbox(source: Path) -> CopySandbox:
    return CopySandbox(source)


def write_tree(root: Path, files: Mapping[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def git_init(root: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    git("config", "user.email", "dev@example.com")
    git("config", "user.name", "Dev")
    git("add", "-A")
    git("commit", "-q", "-m", "base")


OMP_KERNEL = """\
#include <stdio.h>
#include <stdlib.h>
#include <omp.h>

double sum_squares(long n) {
    double s = 0.0;
    #pragma omp parallel for reduction(+:s)
    for (long i = 0; i < n; i++) s += (double)i * (double)i;
    return s;
}
"""

OMP_MAIN = """\
#include <stdio.h>
#include <stdlib.h>
double sum_squares(long n);
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1000;
    printf("%.0f\\n", sum_squares(n));
    return 0;
}
"""

OMP_TEST = """\
#include <stdio.h>
double sum_squares(long n);
int main(void) {
    int failed = sum_squares(4) != 14.0;
    printf("%d passed, %d failed\\n", failed ? 0 : 1, failed);
    return failed;
}
"""

MAKEFILE = """\
CC = gcc
CFLAGS = -O2 -fopenmp

all: prog

prog: main.c kernel.c
\t$(CC) $(CFLAGS) -o prog main.c kernel.c

test_kernel: test_kernel.c kernel.c
\t$(CC) $(CFLAGS) -o test_kernel test_kernel.c kernel.c

test: test_kernel
\t./test_kernel

.PHONY: all test
"""


def c_project(root: Path, *, makefile: bool = True) -> Path:
    files = {"main.c": OMP_MAIN, "kernel.c": OMP_KERNEL, "test_kernel.c": OMP_TEST, ".gitignore": "prog\ntest_kernel\n*.o\n"}
    if makefile:
        files["Makefile"] = MAKEFILE
    return write_tree(root, files)


def python_project(root: Path, *, failing: bool = False) -> Path:
    files = {
        "pyproject.toml": '[project]\nname = "mini"\nversion = "0.1"\n',
        "mini/__init__.py": "",
        "mini/calc.py": "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n",
        "tests/test_calc.py": (
            "import pytest\nfrom mini.calc import add, mul\n\n\n"
            "def test_add():\n    assert add(2, 3) == 5\n\n\n"
            "def test_mul():\n    assert mul(2, 3) == 6\n\n\n"
            "@pytest.mark.skip(reason='not yet')\ndef test_later():\n    pass\n"
        ),
    }
    if failing:
        files["tests/test_wrong.py"] = "from mini.calc import add\n\n\ndef test_wrong():\n    assert add(2, 2) == 5\n"
    return write_tree(root, files)
