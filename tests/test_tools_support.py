"""Small real repositories for the tool tests, and the sandbox they run in."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

from bakeoff.agent.seams import Workspace
from bakeoff.sandboxes.local import LocalSandbox


async def make_sandbox(source: Path) -> LocalSandbox:
    """The real local sandbox over a copy of ``source`` (bubblewrap where it works)."""
    return await LocalSandbox.create(Workspace(path=source))


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
