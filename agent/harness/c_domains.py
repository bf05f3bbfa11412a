"""The value rules of spec inference (``c_spec``): what each argument's elements may hold.

Each rule reads the doc comment or the body (``c_facts``) and writes into the draft's
constraints (``c_plan``'s vocabulary), never over what an earlier rule set: the doc's own
words come first, then what the code does with the values. Each rule adds a note saying why.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bakeoff.agent.harness.c_facts import (Facts, clauses, coo_fields, doc_shapes, elem_class, is_container,
                                           is_size_type, words)
from bakeoff.agent.harness.c_signature import Param, Signature

_NUM = r"(-?\d+(?:\.\d+)?)"
NEAR_ONE = [0.9, 1.1]  # elements of long products, so no partial product overflows
WIDE_KEYS = [0, 1_000_000_000]  # sort keys drawn from a range this wide are almost never tied


@dataclass
class _Rules:
    sig: Signature
    facts: Facts
    sizes: list[str]
    lengths: dict[str, str]
    constraints: dict[str, Any]
    notes: list[str]

    @property
    def args(self) -> dict[str, dict[str, Any]]:
        return self.constraints.setdefault("args", {})

    def spec(self, name: str) -> dict[str, Any]:
        return self.args.setdefault(name, {})

    def inputs(self) -> list[Param]:
        """Containers the function only reads."""
        return [p for p in self.sig.params if is_container(p) and not p.is_output]

    def refs(self, name: str) -> list[str]:
        """A parameter's names in the body: its own and its copies'."""
        return [name, *[a for a, v in self.facts.aliases.items() if v == f"copy:{name}"]]

    def element_uses(self, name: str) -> list[str]:
        """Regexes for one element of ``name``: ``name[...]`` (or a copy's) and its range-for element names."""
        subs = [r"\b" + re.escape(n) + r"\s*\[[^\[\]]*\]" for n in self.refs(name)]
        elems = [r"\b" + re.escape(a) + r"\b(?!\s*[\[(])" for a, v in self.facts.aliases.items() if v == f"elem:{name}"]
        return subs + elems

    def note(self, text: str) -> None:
        self.notes.append(text)


def _set_range(r: _Rules, p: Param, lo: float, hi: float, why: str) -> None:
    spec = r.spec(p.name)
    if any(k in spec for k in ("range", "bernoulli", "coo")):
        return
    ints = elem_class(p) in ("int", "uint", "char")
    spec["range"] = [int(lo), int(hi)] if ints else [float(lo), float(hi)]
    r.note(f"{p.name}: values in {spec['range']} ({why})")


# --------------------------------------------------------------------------- the doc's words


def doc_ranges(r: _Rules) -> None:
    """"values between 0 and 100", "values 0-255", "a grayscale image"."""
    inputs = [p for p in r.inputs() if elem_class(p) in ("int", "uint", "float")]
    for clause in clauses(r.facts.doc):
        m = (re.search(r"between\s+" + _NUM + r"\s+and\s+" + _NUM, clause, re.I)
             or re.search(r"values?\s+(?:from\s+|in\s+)?\[?" + _NUM + r"\s*(?:-|–|to|\.\.)\s*" + _NUM, clause, re.I))
        bounds = (float(m.group(1)), float(m.group(2))) if m else ((0, 255) if "grayscale" in clause.lower() else None)
        if bounds is None or not re.search(r"value|contain|element|grayscale|entries", clause, re.I):
            continue
        named = [p for p in r.sig.params if p.name in words(clause) and is_container(p)]
        for p in named or (inputs if len(inputs) == 1 else []):
            if elem_class(p) in ("int", "uint", "float"):
                _set_range(r, p, bounds[0], bounds[1], "doc")


def adjacency(r: _Rules) -> None:
    """An adjacency matrix: 0/1 entries, sparse enough for paths and components to vary;
    symmetric with no self-loops when the graph is undirected."""
    if not re.search(r"adjacency", r.facts.doc, re.I):
        return
    undirected = bool(re.search(r"undirected", r.facts.doc, re.I))
    for p in r.inputs():
        side = _square(r, p)
        if side is None or elem_class(p) not in ("int", "uint", "bool"):
            continue
        spec = r.spec(p.name)
        spec["bernoulli"] = f"min(0.5, 2/max(1, {side}))"  # an empty graph (side 0) is an input too
        if undirected:
            spec["symmetric"] = side
            spec["zero_diagonal"] = side
        r.note(f"{p.name}: a {'symmetric ' if undirected else ''}0/1 adjacency matrix (doc)")


def _square(r: _Rules, p: Param) -> str | None:
    parts = r.lengths.get(p.name, "").split("*")
    return parts[0] if len(parts) == 2 and parts[0] == parts[1] else None


def factorization(r: _Rules) -> None:
    """A factorization or solve without pivoting needs a well-conditioned matrix: diagonally
    dominant when dense; for sparse COO entries, a full diagonal and positive values."""
    if not re.search(r"\bLU\b|factori[sz]|decompos|linear system|\bsolve\b|\binvert\b|cholesky", r.facts.doc, re.I):
        return
    for p in r.sig.params:
        side = _square(r, p)
        if side is not None and elem_class(p) == "float" and not (p.is_output and r.inputs()):
            r.spec(p.name)["diag_dominant"] = side
            r.note(f"{p.name}: diagonally dominant (the doc asks to factorize or solve)")
        coo = r.spec(p.name).get("coo") if p.name in r.args else None
        if coo is not None:
            coo["diagonal"] = True
            value = _value_field(r, p)
            if value:
                r.spec(p.name).setdefault("fields", {})[value] = {"range": [1, 10]}
            r.note(f"{p.name}: sparse entries with a full diagonal and values in [1, 10] (factorization)")


def _value_field(r: _Rules, p: Param) -> str | None:
    t = p.type.elem if p.type.kind == "vector" else p.type
    fields = r.sig.structs[t.name].fields if t is not None and t.kind == "struct" else ()
    return next((f for f, ft in fields if ft.kind == "scalar" and ft.scalar_class == "float"), None)


def sparse(r: _Rules) -> None:
    """Entries of a sparse matrix in COO format: each (row, column) once, in order, inside the
    matrix's shape."""
    if not r.sizes or not re.search(r"\bCOO\b|sparse", r.facts.doc, re.I):
        return
    shapes = doc_shapes(r.sig, r.facts.doc, r.sizes)
    for p in r.sig.params:
        fields = coo_fields(r.sig, p) if is_container(p) else None
        if fields is None:
            continue
        dims = shapes.get(p.name) or (r.sizes[:2] if len(r.sizes) >= 2 else [r.sizes[0], r.sizes[0]])
        rows, cols = dims[0], dims[-1]
        r.spec(p.name)["coo"] = {"rows": rows, "cols": cols, "density": f"min(0.3, 16/max(1, {cols}))",  # an empty matrix is an input too
                                 "row": fields[0], "col": fields[1]}
        r.note(f"{p.name}: a sparse {rows}x{cols} matrix in COO format, sorted by row then column (doc)")


def fourier(r: _Rules) -> None:
    """Radix-2 transforms take powers of two."""
    if re.search(r"fourier|\bfft\b", r.facts.doc + " " + r.sig.name, re.I):
        r.constraints["_pow2"] = set(r.sizes or ["n"])
        r.note("sizes are powers of two (a Fourier transform)")


def unordered(r: _Rules) -> None:
    if re.search(r"in any order|any order|order (?:of \w+ )?does not matter|order is not important", r.facts.hints, re.I):
        r.constraints["unordered"] = True
        r.note("the output's order does not matter (doc)")


def in_out(r: _Rules) -> None:
    """An output the doc's formula also reads (``y = alpha*A*x + beta*y``) starts with data."""
    for p in r.sig.params:
        if p.is_output and is_container(p):
            n = re.escape(p.name)
            if re.search(r"\b" + n + r"\s*=[^=.;\n]*\b" + n + r"\b", r.facts.doc.replace("`", "")):
                r.spec(p.name)["init"] = "random"
                r.note(f"{p.name}: read as well as written (doc's formula)")


def example_signs(r: _Rules) -> None:
    """Numbers the doc's example inputs show, none of them negative: the inputs are drawn
    non-negative too (``x % 2 == 1`` finds no odd number below zero)."""
    shown = re.findall(r"input\s*:(.*?)(?:output\s*:|$)", r.facts.doc, re.I | re.S)
    numbers = [float(m) for text in shown for m in re.findall(r"(?<![\w.])(-?\d+(?:\.\d+)?)", text)]
    if not numbers or min(numbers) < 0:
        return
    for p in r.sig.params:
        if p.name in r.sizes or p.is_output and is_container(p) and r.inputs():
            continue
        cls = elem_class(p)
        if is_container(p) or (is_size_type(p) or p.type.kind == "scalar" and cls == "float"):
            if cls in ("int", "uint"):
                _set_range(r, p, 0, 100, "the doc's examples are all non-negative")
            elif cls == "float":
                _set_range(r, p, 0, 10, "the doc's examples are all non-negative")


# --------------------------------------------------------------------------- what the code does


def index_scalars(r: _Rules) -> None:
    """An integer argument used as a subscript is drawn inside the container it indexes:
    ``y[k-1]`` -> k in [1, len]; ``dist[source]`` -> source in [0, len-1]."""
    for p in r.sig.params:
        if not is_size_type(p) or p.name in r.sizes or "range" in r.args.get(p.name, {}):
            continue
        m = re.search(r"\b(\w+)\s*\[\s*" + re.escape(p.name) + r"\s*(?:([-+])\s*(\d+)\s*)?\]", r.facts.body)
        if not m:
            continue
        shift = (int(m.group(3)) if m.group(3) else 0) * (-1 if m.group(2) == "-" else 1)
        length = _indexed_length(r, m.group(1))
        lo, hi = -shift, f"{length}-1" if shift == 0 else f"{length}-1-({shift})"
        if shift == -1:
            hi = length
        r.spec(p.name)["range"] = [lo, hi]
        r.note(f"{p.name}: an index of {m.group(1)}, in [{lo}, {hi}] (subscript)")


def _indexed_length(r: _Rules, container: str) -> str:
    root = r.facts.aliases.get(container, f"x:{container}").partition(":")[2]
    if root in {p.name for p in r.sig.params}:
        return r.lengths.get(root, f"len({root})")
    m = re.search(r"\b" + re.escape(container) + r"\s*\(\s*([A-Za-z_]\w*)\s*[,)]", r.facts.body)
    if m and m.group(1) in r.sizes:
        return m.group(1)
    inputs = r.inputs()
    return r.sizes[0] if r.sizes else (f"len({inputs[0].name})" if inputs else "n")


def array_indices(r: _Rules) -> None:
    """Elements used as indices of a fixed-size array (``bins[pixel]++``) stay inside it."""
    for arr in r.sig.params:
        if arr.type.kind != "array" or arr.type.size is None:
            continue
        for m in re.finditer(r"\b" + re.escape(arr.name) + r"\s*\[\s*([A-Za-z_]\w*)\s*(\[[^\[\]]*\])?\s*\]", r.facts.body):
            root = r.facts.aliases.get(m.group(1), f"x:{m.group(1)}").partition(":")[2]
            p = next((q for q in r.sig.params if q.name == root and is_container(q)), None)
            if p is not None and elem_class(p) in ("int", "uint"):
                _set_range(r, p, 0, arr.type.size - 1, f"an index of {arr.name}")


def _literals(r: _Rules, p: Param, ops: str) -> set[float]:
    found: set[float] = set()
    for use in r.element_uses(p.name):
        for m in re.finditer(r"(?:" + use + r")\s*(?:" + ops + r")\s*" + _NUM + r"\b", r.facts.body):
            found.add(float(m.group(m.lastindex or 1)))
    return found


def flags(r: _Rules) -> None:
    """Integer elements the code tests only against 1 (and 0) are 0/1 cells; ones it tests
    against 0 alone must often be 0."""
    for p in r.inputs() + [q for q in r.sig.params if q.is_output and not r.inputs()]:
        if not is_container(p) or elem_class(p) not in ("int", "uint"):
            continue
        eq = _literals(r, p, r"==|!=")
        if eq and eq <= {0.0, 1.0} and 1.0 in eq:
            _set_range(r, p, 0, 1, "the code tests its cells against 1")
        elif eq == {0.0}:
            _set_range(r, p, -5, 5, "the code singles out zeros")


def products(r: _Rules) -> None:
    """Elements multiplied into one product stay near 1, so no partial product overflows."""
    for p in r.sig.params:
        if not is_container(p) or elem_class(p) != "float":
            continue
        for use in r.element_uses(p.name):
            if re.search(r"\*=\s*(?:\(?\s*1(?:\.0*)?\s*/\s*)?(?:" + use + r")", r.facts.body):
                _set_range(r, p, NEAR_ONE[0], NEAR_ONE[1], "multiplied into one product")
                break


def thresholds(r: _Rules) -> None:
    """Values compared against a constant straddle it: ``pages < 100`` -> pages in [0, 200]."""
    for p in r.sig.params:
        if not is_container(p):
            continue
        t = p.type.elem if p.type.kind == "vector" else p.type
        if t is not None and t.kind == "struct":
            for fname, ftype in r.sig.structs[t.name].fields:
                if ftype.kind != "scalar" or ftype.scalar_class not in ("int", "uint", "float"):
                    continue
                lits = set()
                for use in r.element_uses(p.name):
                    pat = r"(?:" + use + r")\s*\.\s*" + re.escape(fname) + r"\s*(?:<=|>=|<|>)\s*" + _NUM + r"\b"
                    lits |= {float(m.group(1)) for m in re.finditer(pat, r.facts.body)}
                if lits and min(lits) >= 0 and max(lits) >= 2:
                    fields = r.spec(p.name).setdefault("fields", {})
                    if fname not in fields:
                        hi = 2 * max(lits)
                        fields[fname] = {"range": [0, int(hi)] if ftype.scalar_class != "float" else [0.0, hi]}
                        r.note(f"{p.name}.{fname}: values straddle {max(lits):g}, the constant the code compares it with")
        elif elem_class(p) in ("int", "uint", "float"):
            lits = _literals(r, p, r"<=|>=|<|>")
            if lits and min(lits) >= 0 and max(lits) >= 2:
                _set_range(r, p, 0, 2 * max(lits), f"straddling {max(lits):g}, the constant the code compares it with")


def sort_keys(r: _Rules) -> None:
    """A sort ordered by one field leaves tied elements in any order: keys are drawn unique."""
    for m in re.finditer(r"std::(?:stable_)?sort\s*\(\s*(\w+)\s*\.\s*begin\s*\(\s*\)[^;]*?\b(\w+)\s*\.\s*(\w+)\s*<\s*(\w+)\s*\.\s*\3\b",
                         r.facts.body, re.S):
        root = r.facts.aliases.get(m.group(1), f"x:{m.group(1)}").partition(":")[2]
        p = next((q for q in r.sig.params if q.name == root), None)
        if p is None or p.type.elem is None or p.type.elem.kind != "struct":
            continue
        field_name = m.group(3)
        spec = r.spec(p.name)
        spec["unique_by"] = [field_name]
        ftype = dict(r.sig.structs[p.type.elem.name].fields).get(field_name)
        if ftype is not None and ftype.kind == "scalar" and ftype.scalar_class in ("int", "uint"):
            spec.setdefault("fields", {}).setdefault(field_name, {"range": list(WIDE_KEYS)})
        r.note(f"{p.name}: unique {field_name} keys (the sort orders by {field_name}; ties could go either way)")


# The doc's words first, then the code's; a rule never overwrites what an earlier one set.
RULES: tuple[Callable[[_Rules], None], ...] = (
    sparse, doc_ranges, adjacency, factorization, fourier, unordered, in_out,
    index_scalars, array_indices, flags, products, thresholds, sort_keys, example_signs,
)


def apply_rules(sig: Signature, facts: Facts, sizes: list[str], lengths: dict[str, str], constraints: dict[str, Any],
                notes: list[str]) -> None:
    """Every rule, in order, on ``constraints`` (``c_plan``'s vocabulary); each adds its note."""
    rules = _Rules(sig, facts, sizes, lengths, constraints, notes)
    for rule in RULES:
        rule(rules)
