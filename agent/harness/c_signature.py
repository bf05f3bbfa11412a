"""Reading a C or C++ function's signature and the structs it uses, from source text.

Pure parsing: no compiler is involved. The differential harness (``c_harness``)
turns what this module finds into a driver program that feeds random inputs to the
reference and to each candidate.

Understood types: scalars (int, long, size_t, float, double, bool, char, fixed-width ints
and their unsigned forms), ``std::string``, ``std::complex<T>``, ``std::vector<T>``,
``std::array<T, N>``, structs defined in the source, pointers (a C array plus a length
parameter) and references (``const&`` is an input, ``&`` an output or in-out argument).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["scalar", "string", "complex", "vector", "array", "struct", "void"]
Passing = Literal["value", "cref", "ref", "cpointer", "pointer"]

# Canonical scalar spellings and their class: signed int, unsigned int, float, bool, char.
_SCALARS: dict[str, str] = {
    "int": "int", "signed": "int", "signed int": "int", "short": "int", "short int": "int",
    "long": "int", "long int": "int", "long long": "int", "long long int": "int",
    "int8_t": "int", "int16_t": "int", "int32_t": "int", "int64_t": "int", "ssize_t": "int",
    "ptrdiff_t": "int", "intptr_t": "int",
    "unsigned": "uint", "unsigned int": "uint", "unsigned short": "uint", "unsigned long": "uint",
    "unsigned long long": "uint", "unsigned short int": "uint", "unsigned long int": "uint",
    "unsigned long long int": "uint", "size_t": "uint", "uint8_t": "uint", "uint16_t": "uint",
    "uint32_t": "uint", "uint64_t": "uint", "uintptr_t": "uint",
    "float": "float", "double": "float", "long double": "float",
    "bool": "bool", "_Bool": "bool",
    "char": "char", "signed char": "int", "unsigned char": "uint",
}

_QUALIFIERS = {"const", "volatile", "restrict", "__restrict", "__restrict__", "struct", "typename", "register"}


class SignatureError(ValueError):
    """The source has no definition of the function, or uses a type the harness cannot feed.

    The user (or the constraints file) can fix this: name the right function, or describe the
    argument in the constraints."""


@dataclass(frozen=True)
class CType:
    kind: Kind
    name: str = ""  # scalar: canonical spelling; struct: struct name
    elem: CType | None = None  # vector/array/complex element type
    size: int | None = None  # std::array extent

    @property
    def scalar_class(self) -> str:
        return _SCALARS.get(self.name, "") if self.kind == "scalar" else ""

    def spell(self, ns: str = "") -> str:
        """C++ spelling; struct names are qualified with ``ns`` (e.g. ``::bk_cand``)."""
        if self.kind == "scalar":
            return self.name
        if self.kind == "void":
            return "void"
        if self.kind == "string":
            return "std::string"
        if self.kind == "struct":
            return f"{ns}::{self.name}" if ns else self.name
        assert self.elem is not None
        inner = self.elem.spell(ns)
        if self.kind == "complex":
            return f"std::complex<{inner}>"
        if self.kind == "vector":
            return f"std::vector<{inner}>"
        return f"std::array<{inner}, {self.size}>"


@dataclass(frozen=True)
class Param:
    name: str
    type: CType  # the value type (for pointers: the pointee)
    passing: Passing

    @property
    def is_output(self) -> bool:
        """A non-const reference or pointer: the function may write it, so it is compared."""
        return self.passing in ("ref", "pointer")

    @property
    def is_pointer(self) -> bool:
        return self.passing in ("pointer", "cpointer")


@dataclass(frozen=True)
class StructDef:
    name: str
    fields: tuple[tuple[str, CType], ...]
    text: str  # the definition as written, for C drivers that need to redeclare it


@dataclass(frozen=True)
class Signature:
    name: str
    returns: CType
    params: tuple[Param, ...]
    structs: dict[str, StructDef] = field(default_factory=dict)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)


# --------------------------------------------------------------------------- text helpers


def strip_comments(src: str) -> str:
    """Remove // and /* */ comments, keeping string and char literals intact."""
    out: list[str] = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c == "/" and i + 1 < n and src[i + 1] == "/":
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif c == "/" and i + 1 < n and src[i + 1] == "*":
            j = src.find("*/", i + 2)
            out.append(" ")
            i = n if j < 0 else j + 2
        elif c in "\"'":
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == "\\" else 1
            out.append(src[i : j + 1])
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


_TOKEN = re.compile(r"::|&&|[A-Za-z_][A-Za-z_0-9]*(?:::[A-Za-z_][A-Za-z_0-9]*)*|\d+[uUlL]*|[<>,*&\[\]()]")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside <>, (), [] and {}."""
    parts, depth, cur = [], 0, []
    for c in text:
        if c in "<([{":
            depth += 1
        elif c in ">)]}":
            depth -= 1
        if c == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    if "".join(cur).strip():
        parts.append("".join(cur))
    return [p.strip() for p in parts]


class _TypeParser:
    def __init__(self, toks: list[str], structs: dict[str, StructDef]):
        self.t = [x for x in toks]
        self.i = 0
        self.structs = structs

    def peek(self) -> str | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self) -> str:
        tok = self.t[self.i]
        self.i += 1
        return tok

    def base(self) -> CType:
        words: list[str] = []
        while (tok := self.peek()) is not None and tok not in ("<", ">", ",", "*", "&", "&&", "[", "]", "(", ")"):
            self.take()
            if tok in _QUALIFIERS:
                continue
            words.append(tok.removeprefix("std::") if tok.startswith("std::") else tok)
        if not words:
            raise SignatureError("missing type name")
        if self.peek() == "<":
            if len(words) != 1:
                raise SignatureError(f"unexpected template type {' '.join(words)}")
            return self.template(words[0])
        joined = " ".join(words)
        if joined in _SCALARS:
            return CType("scalar", joined)
        if joined == "void":
            return CType("void")
        if joined == "string":
            return CType("string")
        if len(words) == 1 and words[0] in self.structs:
            return CType("struct", words[0])
        raise SignatureError(f"unsupported type {joined!r} (not a scalar, std container or struct of the source)")

    def template(self, name: str) -> CType:
        self.take()  # <
        args: list[CType | int] = []
        while True:
            tok = self.peek()
            if tok is not None and re.fullmatch(r"\d+[uUlL]*", tok):
                args.append(int(re.sub(r"[uUlL]", "", self.take())))
            else:
                args.append(self.base())
            tok = self.take()
            if tok == ">":
                break
            if tok != ",":
                raise SignatureError(f"bad template arguments of {name}")
        first = args[0]
        if not isinstance(first, CType):
            raise SignatureError(f"bad template arguments of {name}")
        if name == "vector":
            return CType("vector", elem=first)
        if name == "complex":
            return CType("complex", elem=first)
        if name == "array" and len(args) == 2 and isinstance(args[1], int):
            return CType("array", elem=first, size=args[1])
        raise SignatureError(f"unsupported template std::{name}")


def parse_type(text: str, structs: dict[str, StructDef] | None = None) -> tuple[CType, Passing]:
    """``"std::vector<double> const&"`` -> (vector<double>, "cref")."""
    toks = _tokens(text)
    p = _TypeParser(toks, structs or {})
    const_before = any(t == "const" for t in toks[: _first_decl_index(toks)])
    ctype = p.base()
    passing: Passing = "value"
    const_after = False
    while (tok := p.peek()) is not None:
        p.take()
        if tok == "const":
            const_after = True
        elif tok in ("&", "&&"):
            passing = "cref" if (const_before or const_after) else ("ref" if tok == "&" else "value")
        elif tok in ("*", "["):
            if passing in ("pointer", "cpointer"):
                raise SignatureError("pointers to pointers are not supported")
            passing = "cpointer" if (const_before or (const_after and tok == "[")) else "pointer"
            const_after = False
        elif tok in ("]",) or re.fullmatch(r"\d+", tok) or tok in _QUALIFIERS:
            continue
        else:
            raise SignatureError(f"unexpected {tok!r} in type {text!r}")
    return ctype, passing


def _first_decl_index(toks: list[str]) -> int:
    """Index of the first '*', '&' or '<'-free declarator token, to see if const came first."""
    for i, t in enumerate(toks):
        if t in ("*", "&", "&&", "<"):
            return i
    return len(toks)


def parse_params(text: str, structs: dict[str, StructDef] | None = None) -> tuple[Param, ...]:
    text = text.strip()
    if text in ("", "void"):
        return ()
    params = []
    for i, part in enumerate(_split_top(text)):
        part = re.sub(r"=\s*[^,]+$", "", part).strip()  # default arguments
        m = re.search(r"([A-Za-z_][A-Za-z_0-9]*)\s*(\[[^\]]*\]\s*)*$", part)
        if not m or m.group(1) in _QUALIFIERS or " ".join(_tokens(part)) in _SCALARS:
            raise SignatureError(f"parameter {i} ({part!r}) has no name")
        name = m.group(1)
        type_text = part[: m.start(1)] + ("[" if m.group(2) else "")
        ctype, passing = parse_type(type_text, structs)
        params.append(Param(name, ctype, passing))
    return tuple(params)


_STRUCT = re.compile(r"\bstruct\s+([A-Za-z_]\w*)\s*\{([^{}]*)\}\s*;")
_TYPEDEF_STRUCT = re.compile(r"\btypedef\s+struct\s*([A-Za-z_]\w*)?\s*\{([^{}]*)\}\s*([A-Za-z_]\w*)\s*;")


def parse_structs(src: str) -> dict[str, StructDef]:
    """Plain-data structs defined in the source (in order), fields as (name, type)."""
    text = strip_comments(src)
    found: list[tuple[int, str, str, str]] = []
    for m in _TYPEDEF_STRUCT.finditer(text):
        found.append((m.start(), m.group(3), m.group(2), m.group(0)))
    for m in _STRUCT.finditer(text):
        if any(start <= m.start() < start + len(whole) for start, _, _, whole in found):
            continue
        found.append((m.start(), m.group(1), m.group(2), m.group(0)))
    structs: dict[str, StructDef] = {}
    for _, name, body, whole in sorted(found):
        fields: list[tuple[str, CType]] = []
        for decl in body.split(";"):
            decl = decl.strip()
            if not decl or "(" in decl:
                continue
            names = _split_top(decl)
            first = names[0]
            m = re.search(r"([A-Za-z_]\w*)\s*$", first)
            if not m:
                continue
            ctype, _ = parse_type(first[: m.start()], structs)
            fields.append((m.group(1), ctype))
            for extra in names[1:]:
                fields.append((extra.strip().lstrip("*&").strip(), ctype))
        structs[name] = StructDef(name, tuple(fields), whole)
    return structs


_SPECIFIERS = re.compile(r"^(?:(?:static|inline|extern\s+\"C\"|extern|constexpr|__attribute__\(\([^)]*\)\))\s+)*")


def find_definition(src: str, function: str) -> re.Match[str]:
    text = strip_comments(src)
    pat = re.compile(
        r"(?:^|(?<=[;}\n]))\s*(?P<ret>[A-Za-z_][\w:<>,\s\*&]*?)\s*\b" + re.escape(function)
        + r"\s*\((?P<params>[^()]*)\)\s*(?:const\s*)?\{",
        re.M,
    )
    m = pat.search(text)
    if not m:
        raise SignatureError(f"no definition of {function}() found in the source")
    return m


def parse_signature(src: str, function: str) -> Signature:
    """The signature of ``function``'s first definition in ``src``, with the source's structs."""
    structs = parse_structs(src)
    m = find_definition(src, function)
    ret_text = _SPECIFIERS.sub("", m.group("ret").strip().split("\n")[-1].strip())
    ret_type, ret_passing = parse_type(ret_text, structs)
    if ret_passing != "value":
        raise SignatureError(f"{function}() returns a pointer or reference; only values are supported")
    return Signature(function, ret_type, parse_params(m.group("params"), structs), structs)


def defined_functions(src: str) -> set[str]:
    """Names of the functions the source defines (with a body) at top level."""
    text = strip_comments(src)
    names = set()
    for m in re.finditer(r"\b([A-Za-z_]\w*)\s*\([^()]*\)\s*(?:const\s*)?\{", text):
        if m.group(1) not in ("if", "for", "while", "switch", "catch", "return", "sizeof"):
            names.add(m.group(1))
    return names


def guess_language(src: str) -> Literal["c", "c++"]:
    """C++ when the source uses anything C lacks (std::, references, templates, classes)."""
    text = strip_comments(src)
    cxx = re.search(
        r"std::|\btemplate\s*<|\bclass\s+\w|\bnamespace\b|\bnew\s+\w|\w\s*&\s*\w+\s*[,)]|"
        r"#include\s*<(?:vector|string|array|complex|algorithm|iostream|numeric|map|set|cmath|cstdio|cstdlib)>",
        text,
    )
    return "c++" if cxx else "c"
