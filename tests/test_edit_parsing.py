"""parse_edit_blocks and apply_edit_blocks on answers shaped like real model output."""

from __future__ import annotations

import pytest

from bakeoff.tools.edit import EditError, apply_edit_blocks
from bakeoff.tools.edit_blocks import EditBlock, EditParseError, parse_edit_blocks
from bakeoff.tools.errors import ToolError

F = "```"

# (id, model answer, default_path, expected [(path, search, replace, whole_file)])
PARSE_OK = [
    (
        "bare block, no fences",
        "src/kernel.c\n<<<<<<< SEARCH\nint n = 1;\n=======\nint n = 2;\n>>>>>>> REPLACE\n",
        None,
        [("src/kernel.c", "int n = 1;\n", "int n = 2;\n", False)],
    ),
    (
        "filename before the fence, prose around",
        f"I'll parallelize the loop.\n\nsrc/kernel.c\n{F}c\n<<<<<<< SEARCH\n    for (i = 0; i < n; i++)\n=======\n"
        f"    #pragma omp parallel for\n    for (i = 0; i < n; i++)\n>>>>>>> REPLACE\n{F}\n\nThis should scale well.",
        None,
        [("src/kernel.c", "    for (i = 0; i < n; i++)\n", "    #pragma omp parallel for\n    for (i = 0; i < n; i++)\n", False)],
    ),
    (
        "filename inside the fence",
        f"{F}python\npkg/mod.py\n<<<<<<< SEARCH\nx = 1\n=======\nx = 2\n>>>>>>> REPLACE\n{F}\n",
        None,
        [("pkg/mod.py", "x = 1\n", "x = 2\n", False)],
    ),
    (
        "filename as the fence's info string",
        f"{F}pkg/mod.py\n<<<<<<< SEARCH\nx = 1\n=======\nx = 2\n>>>>>>> REPLACE\n{F}\n",
        None,
        [("pkg/mod.py", "x = 1\n", "x = 2\n", False)],
    ),
    (
        "language and path in the info string",
        f"{F}c:src/a.c\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n{F}\n",
        None,
        [("src/a.c", "a\n", "b\n", False)],
    ),
    (
        "'*** ' decorated name",
        "*** src/a.c\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n",
        None,
        [("src/a.c", "a\n", "b\n", False)],
    ),
    (
        "'# ' heading, bold and backticks",
        f"### `src/a.c`\n\n{F}c\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n{F}\n\n**src/b.c**:\n{F}c\n"
        f"<<<<<<< SEARCH\nc\n=======\nd\n>>>>>>> REPLACE\n{F}\n",
        None,
        [("src/a.c", "a\n", "b\n", False), ("src/b.c", "c\n", "d\n", False)],
    ),
    (
        "'Filename:' label and ./ prefix",
        "Filename: ./lib/util.py\n<<<<<<< SEARCH\nold\n=======\nnew\n>>>>>>> REPLACE\n",
        None,
        [("lib/util.py", "old\n", "new\n", False)],
    ),
    (
        "'// File:' comment inside the fence",
        f"{F}c\n// File: src/a.c\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n{F}\n",
        None,
        [("src/a.c", "a\n", "b\n", False)],
    ),
    (
        "numbered list with indented blocks, two files back to back",
        "1. `src/a.c`\n   <<<<<<< SEARCH\n   a\n   =======\n   b\n   >>>>>>> REPLACE\n"
        "2. src/b.c\n   <<<<<<< SEARCH\n   c\n   =======\n       d\n   >>>>>>> REPLACE\n",
        None,
        [("src/a.c", "a\n", "b\n", False), ("src/b.c", "c\n", "    d\n", False)],
    ),
    (
        "second block without a name reuses the first's",
        f"main.c\n{F}c\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n{F}\n\nAnd the second change:\n\n{F}c\n"
        f"<<<<<<< SEARCH\nc\n=======\nd\n>>>>>>> REPLACE\n{F}\n",
        None,
        [("main.c", "a\n", "b\n", False), ("main.c", "c\n", "d\n", False)],
    ),
    (
        "no name at all, default path given",
        f"{F}cpp\n<<<<<<< SEARCH\nint a;\n=======\nint b;\n>>>>>>> REPLACE\n{F}",
        "solution.cpp",
        [("solution.cpp", "int a;\n", "int b;\n", False)],
    ),
    (
        "CRLF line endings",
        "src/a.c\r\n<<<<<<< SEARCH\r\nint a;\r\nint b;\r\n=======\r\nint c;\r\n>>>>>>> REPLACE\r\n",
        None,
        [("src/a.c", "int a;\nint b;\n", "int c;\n", False)],
    ),
    (
        "5 and 9 marker characters, trailing spaces on markers",
        "a.py\n<<<<< SEARCH   \nx\n=========  \ny\n>>>>>>>>> REPLACE \n",
        None,
        [("a.py", "x\n", "y\n", False)],
    ),
    (
        "legacy ORIGINAL/UPDATED markers",
        "a.py\n<<<<<<< ORIGINAL\nx\n=======\ny\n>>>>>>> UPDATED\n",
        None,
        [("a.py", "x\n", "y\n", False)],
    ),
    (
        "empty SEARCH creates a file",
        "tests/test_new.py\n<<<<<<< SEARCH\n=======\ndef test_x():\n    assert True\n>>>>>>> REPLACE\n",
        None,
        [("tests/test_new.py", "", "def test_x():\n    assert True\n", False)],
    ),
    (
        "deletion: empty REPLACE",
        "a.py\n<<<<<<< SEARCH\nimport os\n=======\n>>>>>>> REPLACE\n",
        None,
        [("a.py", "import os\n", "", False)],
    ),
    (
        "fence lines inside the block are content (editing markdown)",
        f"README.md\n<<<<<<< SEARCH\n{F}sh\nmake\n{F}\n=======\n{F}sh\nmake -j4\n{F}\n>>>>>>> REPLACE\n",
        None,
        [("README.md", f"{F}sh\nmake\n{F}\n", f"{F}sh\nmake -j4\n{F}\n", False)],
    ),
    (
        "Makefile has no extension",
        "Makefile\n<<<<<<< SEARCH\nCFLAGS = -O2\n=======\nCFLAGS = -O3 -fopenmp\n>>>>>>> REPLACE\n",
        None,
        [("Makefile", "CFLAGS = -O2\n", "CFLAGS = -O3 -fopenmp\n", False)],
    ),
    (
        "whole file after a file name line",
        f"Here is the complete file:\n\nsrc/sum.py\n{F}python\ndef total(xs):\n    return sum(xs)\n{F}\n\nDone.",
        None,
        [("src/sum.py", "", "def total(xs):\n    return sum(xs)\n", True)],
    ),
    (
        "two whole files, names bold, four-backtick fence holding a fence",
        f"**docs/a.md**\n````markdown\n# A\n{F}\ncode\n{F}\n````\n\n**b.py**\n{F}\nprint(1)\n{F}\n",
        None,
        [("docs/a.md", "", f"# A\n{F}\ncode\n{F}\n", True), ("b.py", "", "print(1)\n", True)],
    ),
    (
        "single unnamed code block with a default path",
        f"Sure! Here's a faster version:\n\n{F}python\ndef f(n):\n    return n * (n - 1) // 2\n{F}\n",
        "solution.py",
        [("solution.py", "", "def f(n):\n    return n * (n - 1) // 2\n", True)],
    ),
    (
        "unnamed example blocks are ignored when a file is named",
        f"Compile with:\n{F}sh\ngcc -fopenmp a.c\n{F}\n\na.c\n{F}c\nint main(void) {{ return 0; }}\n{F}\n",
        None,
        [("a.c", "", "int main(void) { return 0; }\n", True)],
    ),
]


@pytest.mark.parametrize("text,default,expected", [c[1:] for c in PARSE_OK], ids=[c[0] for c in PARSE_OK])
def test_parse_ok(text, default, expected):
    blocks = parse_edit_blocks(text, default_path=default)
    assert [(b.path, b.search, b.replace, b.whole_file) for b in blocks] == expected


# (id, model answer, default_path, words the error must contain)
PARSE_FAIL = [
    (
        "no file name and no default",
        f"{F}c\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n{F}\n",
        None,
        ["line 2", "no file name"],
    ),
    (
        "answer cut off inside a block",
        "a.c\n<<<<<<< SEARCH\na\n=======\nb\n",
        None,
        ["line 2", "never ends", "cut off"],
    ),
    (
        "missing divider",
        "a.c\n<<<<<<< SEARCH\na\nb\n>>>>>>> REPLACE\n",
        None,
        ["no '=======' line"],
    ),
    (
        "REPLACE without SEARCH",
        "a.c\na\n=======\nb\n>>>>>>> REPLACE\n",
        None,
        ["line 5", "no '<<<<<<< SEARCH'"],
    ),
    (
        "a second SEARCH before the first block closed",
        "a.c\n<<<<<<< SEARCH\na\n<<<<<<< SEARCH\nb\n=======\nc\n>>>>>>> REPLACE\n",
        None,
        ["line 4", "before the block opened at line 2"],
    ),
    (
        "prose only",
        "The loop is already optimal; no change is needed.",
        None,
        ["contains no edit"],
    ),
    (
        "unnamed code blocks without a default path",
        f"Try this:\n{F}c\nint x;\n{F}\n",
        None,
        ["line 2", "no file name"],
    ),
    (
        "two unnamed code blocks are ambiguous even with a default",
        f"{F}c\nint x;\n{F}\nor\n{F}c\nint y;\n{F}\n",
        "a.c",
        ["lines 1, 5"],
    ),
    (
        "whole file cut off",
        f"a.py\n{F}python\ndef f():\n    return 1\n",
        None,
        ["a.py", "never closed"],
    ),
]


@pytest.mark.parametrize("text,default,words", [c[1:] for c in PARSE_FAIL], ids=[c[0] for c in PARSE_FAIL])
def test_parse_fails_clearly(text, default, words):
    with pytest.raises(EditParseError) as info:
        parse_edit_blocks(text, default_path=default)
    assert isinstance(info.value, ToolError)
    for word in words:
        assert word in str(info.value)


def test_parse_error_shows_the_format():
    with pytest.raises(EditParseError, match=r"<<<<<<< SEARCH\n.*\n=======\n.*\n>>>>>>> REPLACE"):
        parse_edit_blocks("nothing here")


# --------------------------------------------------------------------------- applying

SOURCE = """\
#include <stdio.h>

double dot(const double *a, const double *b, long n) {
    double s = 0.0;
    for (long i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

int main(void) {
    return 0;
}
"""


def test_apply_replaces_the_one_match():
    block = EditBlock("dot.c", "    for (long i = 0; i < n; i++)\n", "    #pragma omp parallel for reduction(+:s)\n    for (long i = 0; i < n; i++)\n")
    out = apply_edit_blocks({"dot.c": SOURCE, "other.c": "x\n"}, [block])
    assert "#pragma omp parallel for reduction(+:s)\n    for (long i" in out["dot.c"]
    assert out["other.c"] == "x\n"


def test_apply_in_order_later_blocks_see_earlier_edits():
    blocks = [EditBlock("a.py", "x = 1\n", "x = 2\n"), EditBlock("a.py", "x = 2\n", "x = 3\n")]
    assert apply_edit_blocks({"a.py": "x = 1\n"}, blocks)["a.py"] == "x = 3\n"


def test_apply_refuses_ambiguous_search_with_line_numbers():
    text = "a = 0\nreturn s;\nb = 1\nreturn s;\n"
    with pytest.raises(EditError, match=r"occurs 2 times in f.c \(at lines 2, 4\)"):
        apply_edit_blocks({"f.c": text}, [EditBlock("f.c", "return s;\n", "return t;\n")])


def test_did_you_mean_points_at_closest_region():
    wrong = "    for (int i = 0; i < n; i++)\n        s += a[i] * b[i];\n"
    with pytest.raises(EditError) as info:
        apply_edit_blocks({"dot.c": SOURCE}, [EditBlock("dot.c", wrong, "x\n")])
    message = str(info.value)
    assert "Did you mean lines 5-6" in message
    assert "5|     for (long i = 0; i < n; i++)" in message
    assert "-    for (int i = 0; i < n; i++)" in message


def test_did_you_mean_notes_whitespace_only_difference():
    tabbed = "\tdouble s = 0.0;  \n"
    with pytest.raises(EditError, match=r"Lines 4-4 differ from your SEARCH text only in whitespace"):
        apply_edit_blocks({"dot.c": SOURCE}, [EditBlock("dot.c", tabbed, "x\n")])


def test_no_similar_region_says_to_read_again():
    with pytest.raises(EditError, match="read the file again"):
        apply_edit_blocks({"dot.c": SOURCE}, [EditBlock("dot.c", "completely unrelated text here\n", "x\n")])


def test_every_failing_block_is_reported_and_nothing_applies():
    blocks = [EditBlock("a.py", "nope\n", "x\n"), EditBlock("a.py", "x = 1\n", "x = 2\n"), EditBlock("b.py", "y\n", "z\n")]
    with pytest.raises(EditError) as info:
        apply_edit_blocks({"a.py": "x = 1\n"}, blocks)
    message = str(info.value)
    assert "Edit 1 (a.py) failed" in message and "Edit 3 (b.py) failed" in message
    assert "b.py does not exist" in message and "None of the 3 edits was applied" in message


def test_missing_file_suggests_close_paths():
    with pytest.raises(EditError, match=r"Did you mean src/kernel.c"):
        apply_edit_blocks({"src/kernel.c": "a\n"}, [EditBlock("src/kernal.c", "a\n", "b\n")])


def test_new_file_and_refusal_to_overwrite_with_empty_search():
    out = apply_edit_blocks({}, [EditBlock("new.py", "", "print(1)\n")])
    assert out == {"new.py": "print(1)\n"}
    with pytest.raises(EditError, match="already exists"):
        apply_edit_blocks({"new.py": "print(0)\n"}, [EditBlock("new.py", "", "print(1)\n")])


def test_whole_file_replaces_content():
    out = apply_edit_blocks({"a.py": "old\n"}, [EditBlock("a.py", "", "new\n", whole_file=True)])
    assert out["a.py"] == "new\n"


def test_crlf_file_keeps_its_line_endings():
    out = apply_edit_blocks({"w.c": "int a;\r\nint b;\r\n"}, [EditBlock("w.c", "int a;\n", "int c;\n")])
    assert out["w.c"] == "int c;\r\nint b;\r\n"


def test_file_without_final_newline_matches_its_last_line():
    out = apply_edit_blocks({"a.py": "x = 1\ny = 2"}, [EditBlock("a.py", "y = 2\n", "y = 3\n")])
    assert out["a.py"] == "x = 1\ny = 3"


def test_parse_then_apply_round_trip():
    answer = f"dot.c\n{F}c\n<<<<<<< SEARCH\n    double s = 0.0;\n    for (long i = 0; i < n; i++)\n=======\n    double s = 0.0;\n    #pragma omp parallel for reduction(+:s)\n    for (long i = 0; i < n; i++)\n>>>>>>> REPLACE\n{F}\n"
    out = apply_edit_blocks({"dot.c": SOURCE}, parse_edit_blocks(answer))
    assert out["dot.c"].count("#pragma omp parallel for") == 1
