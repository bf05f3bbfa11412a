"""read_file, list_files and search on real trees, through a sandbox and on the workspace."""

from __future__ import annotations

import pytest

from bakeoff.agent.seams import ToolContext
from bakeoff.tools.errors import ToolError
from bakeoff.tools.files import ListFiles, ReadFile, Search
from bakeoff.tools.ignore import glob_matcher, is_ignored, parse_ignore_file
from tests.test_tools_support import git_init, make_sandbox, write_tree

TREE = {
    ".gitignore": "build/\n*.log\n/secret.txt\n!keep.log\ndocs/**/*.tmp\n",
    "src/main.c": "#include <omp.h>\nint main(void) {\n    #pragma omp parallel\n    return 0;\n}\n",
    "src/util.c": "int helper(int x) { return x * 2; }\n",
    "src/sub/.gitignore": "generated.c\n",
    "src/sub/generated.c": "int main_generated;\n",
    "src/sub/real.c": "int real_one;\n",
    "build/out.c": "int main_in_build;\n",
    "run.log": "main crashed\n",
    "keep.log": "main kept\n",
    "secret.txt": "main secret\n",
    "nested/secret.txt": "main not secret here\n",
    "docs/a/b/x.tmp": "main temp\n",
    "docs/guide.md": "Run main with -n.\n",
}
VISIBLE = sorted(
    [".gitignore", "src/main.c", "src/util.c", "src/sub/.gitignore", "src/sub/real.c", "keep.log",
     "nested/secret.txt", "docs/guide.md"]
)


@pytest.fixture(params=["plain", "git"])
def tree(tmp_path, request):
    write_tree(tmp_path, TREE)
    (tmp_path / "blob.bin").write_bytes(b"main\0\1\2")
    if request.param == "git":
        git_init(tmp_path)  # .gitignore'd files stay out of the index: ls-files path
    return tmp_path


@pytest.fixture(params=["workspace", "sandbox"])
async def ctx(tree, request):
    if request.param == "workspace":
        yield ToolContext(workspace=tree)
        return
    sandbox = await make_sandbox(tree)
    yield ToolContext(sandbox=sandbox)
    await sandbox.close()


async def test_list_files_respects_gitignore(ctx):
    result = await ListFiles()(ListFiles.Args(), ctx)
    assert sorted(f for f in result.files if f != "blob.bin") == VISIBLE
    assert result.total == len(VISIBLE) + 1 and not result.truncated


async def test_list_files_glob_and_cap(ctx):
    c_files = await ListFiles()(ListFiles.Args(glob="*.c"), ctx)
    assert c_files.files == ["src/main.c", "src/sub/real.c", "src/util.c"]
    anchored = await ListFiles()(ListFiles.Args(glob="src/*.c"), ctx)
    assert anchored.files == ["src/main.c", "src/util.c"]
    capped = await ListFiles()(ListFiles.Args(glob="**", limit=2), ctx)
    assert len(capped.files) == 2 and capped.truncated and capped.total == len(VISIBLE) + 1


async def test_search_respects_gitignore_and_renders_grep_lines(ctx):
    result = await Search()(Search.Args(pattern=r"\bmain"), ctx)
    paths = {m.path for m in result.matches}
    assert paths == {"src/main.c", "keep.log", "nested/secret.txt", "docs/guide.md"}
    assert "src/main.c:2:int main(void) {" in result.render().splitlines()
    assert result.total == len(result.matches) == 4  # binary blob.bin is skipped


async def test_search_glob_case_and_cap(ctx):
    result = await Search()(Search.Args(pattern="PRAGMA", ignore_case=True, glob="*.c"), ctx)
    assert [(m.path, m.line) for m in result.matches] == [("src/main.c", 3)]
    capped = await Search()(Search.Args(pattern="main", limit=1), ctx)
    assert len(capped.matches) == 1 and capped.truncated and capped.total > 1


async def test_search_bad_regex_is_a_tool_error(ctx):
    with pytest.raises(ToolError, match="not a valid Python regular expression"):
        await Search()(Search.Args(pattern="(unclosed"), ctx)


async def test_read_file_range_and_cap(ctx):
    whole = await ReadFile()(ReadFile.Args(path="src/main.c"), ctx)
    assert whole.content.startswith("#include <omp.h>") and whole.total_lines == 5 and not whole.truncated
    part = await ReadFile()(ReadFile.Args(path="./src/main.c", start_line=2, end_line=3), ctx)
    assert part.content == "int main(void) {\n    #pragma omp parallel\n" and (part.start_line, part.end_line) == (2, 3)
    capped = await ReadFile()(ReadFile.Args(path="src/main.c", max_chars=200), ctx)
    assert not capped.truncated  # fits
    binary = await ReadFile()(ReadFile.Args(path="blob.bin"), ctx)
    assert binary.content.startswith("[binary file")


async def test_read_file_long_file_is_cut_with_a_marker(tmp_path):
    (tmp_path / "big.txt").write_text("".join(f"line {i}\n" for i in range(1, 2001)))
    result = await ReadFile()(ReadFile.Args(path="big.txt", max_chars=500), ToolContext(workspace=tmp_path))
    assert result.truncated and result.end_line < 2000
    assert f"read on with start_line={result.end_line + 1}" in result.content


@pytest.mark.parametrize("bad", ["../etc/passwd", "/etc/passwd", ".git/config", "src/../../x"])
async def test_read_file_refuses_paths_outside(tmp_path, bad):
    with pytest.raises(ToolError):
        await ReadFile()(ReadFile.Args(path=bad), ToolContext(workspace=tmp_path))


async def test_read_file_missing_says_how_to_find_it(ctx):
    with pytest.raises(ToolError, match="use list_files or search"):
        await ReadFile()(ReadFile.Args(path="src/nope.c"), ctx)


async def test_read_file_refuses_symlink_leaving_workspace(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "link.txt").symlink_to(outside)
    with pytest.raises(ToolError, match="outside the repository"):
        await ReadFile()(ReadFile.Args(path="link.txt"), ToolContext(workspace=repo))


def test_ignore_matcher_rules():
    rules = parse_ignore_file("# comment\n*.o\n/top.txt\nbuild/\n!keep.o\na/**/b\n\\#hash\n", "")
    assert is_ignored(rules, "x/y.o", False) and not is_ignored(rules, "x/keep.o", False)
    assert is_ignored(rules, "top.txt", False) and not is_ignored(rules, "d/top.txt", False)
    assert is_ignored(rules, "x/build", True) and not is_ignored(rules, "x/build", False)
    assert is_ignored(rules, "a/b", False) and is_ignored(rules, "a/x/y/b", False)
    assert is_ignored(rules, "#hash", False)
    nested = parse_ignore_file("gen.c\n", "src")
    assert is_ignored(nested, "src/gen.c", False) and not is_ignored(nested, "gen.c", False)


def test_glob_matcher():
    assert glob_matcher("*.c")("a/b/c.c") and not glob_matcher("*.c")("a/b/c.cc")
    assert glob_matcher("src/**/*.py")("src/x.py") and glob_matcher("src/**/*.py")("src/a/b/x.py")
    assert not glob_matcher("src/*.py")("src/a/x.py")
    assert glob_matcher("test_[a-c].py")("t/test_b.py") and not glob_matcher("test_[!a-c].py")("test_b.py")


async def test_large_listing_fits_the_sandbox_output_cap(tmp_path):
    names = {f"generated/module_with_a_rather_long_name_{i:05d}.py": "x = 1\n" for i in range(2500)}
    write_tree(tmp_path, names)
    sandbox = await make_sandbox(tmp_path)
    try:
        result = await ListFiles()(ListFiles.Args(limit=5000), ToolContext(sandbox=sandbox))
        assert result.total == 2500 and result.truncated and 1000 < len(result.files) < 2500
        found = await Search()(Search.Args(pattern="x = 1", limit=1000), ToolContext(sandbox=sandbox))
        assert found.total == 2500 and found.truncated and len(found.matches) == 1000
    finally:
        await sandbox.close()
