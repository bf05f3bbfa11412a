"""The edit tool on a sandbox: applies blocks atomically and explains failures."""

from __future__ import annotations

import pytest

from bakeoff.agent.seams import ToolContext
from bakeoff.tools.edit import Edit, EditError
from bakeoff.tools.edit_blocks import EditBlock, EditParseError
from bakeoff.tools.errors import ToolError
from tests.test_tools_support import c_project, make_sandbox

ANSWER = """I'll parallelize the reduction.

kernel.c
```c
<<<<<<< SEARCH
    #pragma omp parallel for reduction(+:s)
=======
    #pragma omp parallel for reduction(+:s) schedule(static)
>>>>>>> REPLACE
```

And add a header for the kernel:

include/kernel.h
```c
<<<<<<< SEARCH
=======
double sum_squares(long n);
>>>>>>> REPLACE
```
"""


@pytest.fixture
async def ctx(tmp_path):
    sandbox = await make_sandbox(c_project(tmp_path))
    yield ToolContext(sandbox=sandbox, workspace=tmp_path)
    await sandbox.close()


async def test_edit_from_model_text(ctx):
    result = await Edit()(Edit.Args(text=ANSWER), ctx)
    assert result.changed == ["kernel.c", "include/kernel.h"] and result.created == ["include/kernel.h"]
    assert "+    #pragma omp parallel for reduction(+:s) schedule(static)" in result.diff
    assert "--- /dev/null\n+++ b/include/kernel.h" in result.diff
    assert b"schedule(static)" in await ctx.sandbox.read_file("kernel.c")
    assert (await ctx.sandbox.read_file("include/kernel.h")) == b"double sum_squares(long n);\n"
    assert "schedule" not in (ctx.workspace / "kernel.c").read_text()  # the user's tree is untouched


async def test_failed_edit_changes_nothing_and_says_where(ctx):
    blocks = [
        EditBlock("main.c", "#include <stdio.h>\n", "#include <stdio.h>\n#include <omp.h>\n"),
        EditBlock("kernel.c", "    for (int i = 0; i < n; i++) s += (double)i * (double)i;\n", "x\n"),
    ]
    before = await ctx.sandbox.read_file("main.c")
    with pytest.raises(EditError) as info:
        await Edit()(Edit.Args(blocks=blocks), ctx)
    assert "Did you mean lines 8-8" in str(info.value) and "for (long i = 0" in str(info.value)
    assert await ctx.sandbox.read_file("main.c") == before


async def test_whole_file_write_and_parse_errors(ctx):
    result = await Edit()(Edit.Args(blocks=[EditBlock("main.c", "", "int main(void) { return 0; }\n", whole_file=True)]), ctx)
    assert result.changed == ["main.c"] and result.created == []
    with pytest.raises(EditParseError, match="no file name"):
        await Edit()(Edit.Args(text="<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n"), ctx)
    with pytest.raises(ToolError, match="no edit given"):
        await Edit()(Edit.Args(), ctx)


@pytest.mark.parametrize("path", ["../outside.c", "/etc/hosts", ".git/config"])
async def test_edit_refuses_paths_outside_the_repo(ctx, path):
    with pytest.raises(ToolError):
        await Edit()(Edit.Args(blocks=[EditBlock(path, "", "x\n")]), ctx)


async def test_edit_needs_a_sandbox(tmp_path):
    with pytest.raises(ToolError, match="needs a sandbox"):
        await Edit()(Edit.Args(blocks=[EditBlock("a.c", "", "x\n")]), ToolContext(workspace=tmp_path))
