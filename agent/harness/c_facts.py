"""What a C/C++ function's source says about its inputs, read without a compiler.

The spec inference (``c_spec``) turns these facts into a driver plan: the doc comment before
the definition (and the comments inside it), the body, its loops with their bounds, the
subscripts each container gets, the local names that stand for a parameter (an element of a
range-for, a copy, ``int n = x.size()``), and the helper functions the reference calls but the
source only declares. Pure: text in, facts out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bakeoff.agent.harness.c_signature import Param, Signature, defined_functions, find_definition, strip_comments

_IDENT = r"[A-Za-z_]\w*"
# ``std::vector<int> y(x);``, ``auto y = x;``: a declaration (a type, then the name) copying a name.
_COPY = re.compile(r"(?:^|[;{}\s])(?:const\s+)?([\w:]+)(?:<[^;{}()]*>)?\s*[&*]?\s+(" + _IDENT + r")\s*(?:\(|=|\{)\s*("
                   + _IDENT + r")\s*[)};]")
_KEYWORDS = {"if", "for", "while", "switch", "return", "sizeof", "catch", "else", "do", "case", "new", "delete"}


@dataclass
class Loop:
    """One ``for``/``while`` loop: its header, its body and the loops inside it."""

    kind: str  # "for", "range" (range-for), "while" or "do"
    header: str
    body: str
    var: str = ""  # the loop variable (for a range-for: the element's name)
    children: list[Loop] = field(default_factory=list)


@dataclass
class Facts:
    doc: str  # the comment block right before the definition, as plain text
    hints: str  # the doc and every comment inside the function
    body: str  # the function's body, comments removed
    loops: list[Loop]
    aliases: dict[str, str]  # local name -> what it stands for: "elem:x", "copy:x", "len:x"
    declared_only: set[str]  # functions the source declares but does not define
    called: set[str]  # names called in the body


# --------------------------------------------------------------------------- text


def matching(text: str, start: int, open_c: str = "{", close_c: str = "}") -> int:
    """Index just past the bracket that closes the one at ``start``."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == open_c:
            depth += 1
        elif text[i] == close_c:
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def _comments(src: str) -> list[tuple[int, int, str]]:
    """(start, end, text without the markers) of each comment, outside string literals."""
    out = []
    for m in re.finditer(r"//[^\n]*|/\*.*?(?:\*/|\Z)|\"(?:\\.|[^\"\\])*\"|'(?:\\.|[^'\\])*'", src, re.S):
        tok = m.group(0)
        if tok.startswith("//"):
            out.append((m.start(), m.end(), tok[2:]))
        elif tok.startswith("/*"):
            out.append((m.start(), m.end(), tok[2:].removesuffix("*/")))
    return out


def _definition_start(src: str, function: str, comments: list[tuple[int, int, str]]) -> int:
    pat = re.compile(r"\b" + re.escape(function) + r"\s*\([^()]*\)\s*(?:const\s*)?\{")
    for m in pat.finditer(src):
        if not any(a <= m.start() < b for a, b, _ in comments):
            line = src.rfind("\n", 0, m.start())
            return line + 1
    return -1


def doc_comment(src: str, function: str) -> tuple[str, str]:
    """(the comments right before the definition, those and the ones inside the body)."""
    comments = _comments(src)
    start = _definition_start(src, function, comments)
    if start < 0:
        return "", ""
    doc: list[str] = []
    pos = start
    for a, b, text in reversed([c for c in comments if c[1] <= start]):
        if not re.fullmatch(r"[\w\s:<>,*&]*", src[b:pos]):  # only a return type may stand between
            break
        doc.insert(0, text)
        pos = a
    end = matching(src, src.find("{", start))
    inside = [text for a, _, text in comments if start <= a < end]
    clean = lambda parts: "\n".join(re.sub(r"^[ \t]*\*[ \t]?", "", p, flags=re.M) for p in parts)  # noqa: E731
    return clean(doc), clean(doc + inside)


def function_body(src: str, function: str) -> str:
    """The body of the function's first definition, without comments or the outer braces."""
    text = strip_comments(src)
    m = find_definition(src, function)
    return text[m.end() : matching(text, m.end() - 1) - 1]


# --------------------------------------------------------------------------- loops


def _statement_end(text: str, i: int) -> int:
    """Index just past the statement starting at ``i``: a block, or up to a ``;`` outside brackets."""
    while i < len(text) and text[i].isspace():
        i += 1
    if i < len(text) and text[i] == "{":
        return matching(text, i)
    m = re.match(r"(for|while)\s*\(", text[i:])
    if m:
        close = matching(text, i + m.end() - 1, "(", ")")
        return _statement_end(text, close)
    depth = 0
    while i < len(text):
        c = text[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == ";" and depth <= 0:
            return i + 1
        i += 1
    return i


def _loop_var(kind: str, header: str) -> str:
    if kind == "range":
        m = re.search(r"(" + _IDENT + r")\s*:(?!:)", header)
        return m.group(1) if m else ""
    m = re.match(r"\s*(?:[\w:<>]+\s+)*?(" + _IDENT + r")\s*=", header)
    if kind == "for" and m:
        return m.group(1)
    m = re.search(r"(" + _IDENT + r")\s*(?:<|<=|!=|>|>=)", header)
    return m.group(1) if m else ""


def loops(text: str) -> list[Loop]:
    """The loops of ``text``, outermost first, each with the loops nested in it."""
    found: list[Loop] = []
    pos = 0
    pat = re.compile(r"\b(for|while|do)\b\s*(\(|\{)?")
    while (m := pat.search(text, pos)) is not None:
        word = m.group(1)
        if word == "do":
            start = text.find("{", m.start())
            if start < 0:
                break
            end = matching(text, start)
            found.append(Loop("do", "", text[start + 1 : end - 1], children=loops(text[start + 1 : end - 1])))
            tail = re.match(r"\s*while\s*\(", text[end:])
            pos = matching(text, end + tail.end() - 1, "(", ")") if tail else end
            continue
        if m.group(2) != "(":
            pos = m.end()
            continue
        close = matching(text, m.end() - 1, "(", ")")
        header = text[m.end() : close - 1]
        kind = "range" if word == "for" and ";" not in header else word
        end = _statement_end(text, close)
        body = text[close:end].strip()
        if body.startswith("{"):
            body = body[1:-1]
        found.append(Loop(kind, header, body, _loop_var(kind, header), loops(body)))
        pos = end
    return found


# --------------------------------------------------------------------------- names


def aliases(body: str, params: list[str]) -> dict[str, str]:
    """Local names that stand for a parameter: range-for elements (``elem:x``), copies
    (``copy:x``) and lengths (``len:x``), followed through chains of them."""
    out: dict[str, str] = {}
    known = set(params)
    for _ in range(3):  # a copy's element, a copy of a copy
        for m in re.finditer(r"for\s*\([^;()]*?\b(" + _IDENT + r")\s*:(?!:)\s*(" + _IDENT + r")\s*\)", body):
            if m.group(2) in known:
                out.setdefault(m.group(1), f"elem:{m.group(2)}")
        for m in _COPY.finditer(body):
            if m.group(3) in known and m.group(2) not in known and m.group(1) not in _KEYWORDS:
                out.setdefault(m.group(2), f"copy:{m.group(3)}")
        for m in re.finditer(r"\b(" + _IDENT + r")\s*=\s*(?:\([\w\s]+\)\s*)?(" + _IDENT + r")\s*\.\s*size\s*\(\s*\)", body):
            if m.group(2) in known and m.group(1) not in known:
                out.setdefault(m.group(1), f"len:{m.group(2)}")
        known = set(params) | {a for a, v in out.items() if v.startswith("copy:")}
    return {a: _root(v, out) for a, v in out.items()}


def _root(value: str, table: dict[str, str]) -> str:
    """``copy:y`` where y is itself ``copy:x`` -> ``copy:x`` (and the same for elements and lengths)."""
    kind, _, name = value.partition(":")
    seen = 0
    while name in table and table[name].startswith("copy:") and seen < 5:
        name = table[name].partition(":")[2]
        seen += 1
    return f"{kind}:{name}"


def top_level(text: str) -> str:
    """``text`` with every brace block blanked out except namespaces and ``extern "C"``: what
    is left declares and defines things, it runs nothing."""
    out = []
    i = 0
    while i < len(text):
        if text[i] == "{" and not re.search(r"(?:namespace(?:\s+" + _IDENT + r")?|extern\s+\"C\")\s*$", text[:i]):
            i = matching(text, i)
            out.append("{}")
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


def declared_only(src: str) -> set[str]:
    """Functions the source declares (a prototype ending in ``;``) but never defines."""
    text = top_level(strip_comments(src))
    declared = set()
    for m in re.finditer(r"(?:^|[;}\n])\s*[\w:<>,\s\*&]+?\b(" + _IDENT + r")\s*\(([^()]*)\)\s*;", text):
        name, params = m.group(1), m.group(2).strip()
        if name in _KEYWORDS or '"' in params:
            continue
        # ``std::vector<int> x(5);`` is a variable: a prototype's parameters have types, not just values.
        if params and not re.search(r"[A-Za-z_]\w*[\s\*&]+[A-Za-z_]\w*|[\*&]|\bvoid\b|::", params):
            continue
        declared.add(name)
    return declared - defined_functions(src)


def read_facts(src: str, function: str, params: list[str]) -> Facts:
    body = function_body(src, function)
    doc, hints = doc_comment(src, function)
    called = {m.group(1) for m in re.finditer(r"(?<![.\w:>])(" + _IDENT + r")\s*\(", body)} - _KEYWORDS
    return Facts(doc=doc, hints=hints, body=body, loops=loops(body), aliases=aliases(body, params),
                 declared_only=declared_only(src), called=called)


# --------------------------------------------------------------------------- parameters and the doc's words


def words(text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z_]\w*", text.replace("`", " ")))


def is_size_type(p: Param) -> bool:
    """An integer passed by value: what a size or an index is."""
    return p.type.kind == "scalar" and p.type.scalar_class in ("int", "uint") and p.passing == "value"


def is_container(p: Param) -> bool:
    return p.is_pointer or p.type.kind == "vector"


def elem_class(p: Param) -> str:
    """``int``/``uint``/``float``/``bool``/``char`` for a container of scalars (or a scalar),
    else the element's kind (``struct``, ``string``, ...)."""
    t = p.type if p.is_pointer else (p.type.elem if p.type.elem is not None else p.type)
    return t.scalar_class if t.kind == "scalar" else t.kind


def coo_fields(sig: Signature, p: Param) -> tuple[str, str] | None:
    """(row field, column field) of a struct that holds one entry of a sparse matrix."""
    t = p.type.elem if p.type.kind == "vector" else p.type
    if t is None or t.kind != "struct":
        return None
    names = [f for f, _ in sig.structs[t.name].fields]
    row = next((f for f in names if f.lower() in ("row", "r", "i", "row_idx", "rowidx")), None)
    col = next((f for f in names if f.lower() in ("col", "column", "c", "j", "col_idx", "colidx")), None)
    return (row, col) if row and col else None


def clauses(doc: str) -> list[str]:
    """The doc's clauses: sentences split again at commas and semicolons."""
    return [c.strip() for c in re.split(r"[.;,]\s|\n\s*\n|:\s*\n", " ".join(doc.replace("`", " ").split("\n")) + " ")]


def shape_dims(clause: str, sizes: list[str]) -> list[str] | None:
    """The size variables of a shape in a clause: "an MxK matrix" -> [M, K]; "N elements" -> [N]."""
    for m in re.finditer(r"\b([A-Za-z_]\w*?)\s*[xX×]\s*([A-Za-z_]\w*)\b", clause):
        if m.group(1) in sizes and m.group(2) in sizes:
            return [m.group(1), m.group(2)]
    m = re.search(r"\b(?:has|have|with|of|length|size)\s+(?:length\s+|size\s+)?([A-Za-z_]\w*)\b", clause)
    if m and m.group(1) in sizes and re.search(r"elements|values|entries|items|numbers|length|size", clause):
        return [m.group(1)]
    return None


def doc_shapes(sig: Signature, doc: str, sizes: list[str]) -> dict[str, list[str]]:
    """Container parameter -> the size variables of its shape, as the doc states it."""
    names = {p.name for p in sig.params if is_container(p)}
    shapes: dict[str, list[str]] = {}
    for clause in clauses(doc):
        dims = shape_dims(clause, sizes)
        if not dims:
            continue
        for subject in (words(clause) & names) - set(sizes):
            shapes.setdefault(subject, dims)
    return shapes
