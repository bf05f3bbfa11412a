"""Inferring a C/C++ function's driver plan (its input spec) from its source, with no human.

The differential harness needs to know what inputs a function accepts: which integer
parameters are sizes and how each container's length follows from them, what values its
elements take, which helper functions must be linked, whether the order of its output
matters. A person can write that down (``c_plan``'s constraints vocabulary); here it is read
from the source and its doc comment (``c_facts``), rule by rule:

- sizes: integer parameters that bound loops or name a dimension in the doc ("A is an NxN
  matrix", "x has N elements"), or multiply an index (``A[i * N + j]``);
- lengths: from the doc's shapes, else from how the body indexes the container;
- domains: ranges the doc states ("values between 0 and 100"), elements used as indices of a
  fixed-size array, 0/1 grids, adjacency matrices (sparse, symmetric when undirected),
  sparse matrices in COO format, factorizations (diagonally dominant), transforms over
  powers of two (Fourier), keys a sort orders by (unique), thresholds the code compares
  against (straddled), products of many elements (near 1);
- index arguments (``k``, ``source``) drawn inside the container they index;
- sizes for correctness, race-exposing and timing inputs from the loop nesting (the work's
  degree in the sizes), so a cubic function is not run on a million-element input.

The result is a draft: ``c_spec_check`` validates it against the reference (sanitizers,
growth with size) before anyone trusts it. Pure: source in, draft out.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Any

from bakeoff.agent.harness import c_domains
from bakeoff.agent.harness.c_facts import (Facts, Loop, clauses, coo_fields, doc_shapes, is_container, is_size_type,
                                             read_facts, shape_dims, words)
from bakeoff.agent.harness.c_signature import Param, Signature, parse_signature

MEDIUM_WORK = 1 << 20  # elementary steps of a race-exposing input
LARGE_WORK = 1 << 23  # and of the timing input
_ALGORITHMS = ("sort", "stable_sort", "find", "find_if", "count", "count_if", "accumulate", "reduce", "transform",
               "copy", "fill", "min_element", "max_element", "nth_element", "partial_sort", "unique", "reverse",
               "inner_product", "partial_sum", "inclusive_scan", "exclusive_scan", "any_of", "all_of", "none_of")


@dataclass
class SpecDraft:
    """A driver plan read from the source, not yet checked against the reference."""

    constraints: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # what was inferred, and from what
    missing: list[str] = field(default_factory=list)  # helpers the reference calls that nothing defines
    degree: int = 1  # the work's degree in the size variables


def _root(name: str, facts: Facts) -> str:
    """The parameter a local name stands for (itself when it is one)."""
    return facts.aliases.get(name, f"x:{name}").partition(":")[2]


# --------------------------------------------------------------------------- sizes


def size_params(sig: Signature, facts: Facts) -> list[str]:
    """Integer parameters that are sizes: they bound a loop, shape a container in the doc, or
    scale an index; never one used only as an index itself."""
    ints = [p.name for p in sig.params if is_size_type(p)]
    shaped = {d for c in clauses(facts.doc) for d in (shape_dims(c, ints) or [])}
    out = []
    for p in sig.params:
        if not is_size_type(p):
            continue
        n = re.escape(p.name)
        bounds = bool(re.search(r"\b\w+\s*(?:<|<=|!=)\s*[^;)]*\b" + n + r"\b", facts.body))
        scales = bool(re.search(r"\[[^\]]*(?:\*\s*" + n + r"\b|\b" + n + r"\s*\*)[^\]]*\]", facts.body))
        in_doc = p.name in shaped
        indexes = bool(re.search(r"\[\s*" + n + r"\s*(?:[-+]\s*\d+\s*)?\]", facts.body))
        if (bounds or scales or in_doc) and not (indexes and not (scales or in_doc)):
            out.append(p.name)
    return out


def _loop_bounds(loops: list[Loop], out: dict[str, str] | None = None) -> dict[str, str]:
    """Loop variable -> the expression it stays below."""
    out = {} if out is None else out
    for lp in loops:
        if lp.kind == "for" and lp.var:
            cond = lp.header.split(";")[1] if lp.header.count(";") >= 2 else ""
            m = re.search(r"\b" + re.escape(lp.var) + r"\s*(?:<|<=|!=)\s*(.+)", cond)
            if m:
                out.setdefault(lp.var, m.group(1).strip())
        _loop_bounds(lp.children, out)
    return out


def _indexed_length(p: str, facts: Facts, sizes: list[str], bounds: dict[str, str]) -> str | None:
    """A container's length from its subscripts: ``A[i * N + j]`` with ``i < M`` -> ``M*N``."""
    names = [p, *[a for a, v in facts.aliases.items() if v == f"copy:{p}"]]
    best: str | None = None
    for name in names:
        for m in re.finditer(r"\b" + re.escape(name) + r"\s*\[([^\[\]]*)\]", facts.body):
            sub = m.group(1)
            found = re.search(r"\b(\w+)\s*\*\s*(\w+)\b", sub)
            if found and (found.group(2) in sizes or found.group(1) in sizes):
                a, s = (found.group(1), found.group(2)) if found.group(2) in sizes else (found.group(2), found.group(1))
                other = bounds.get(a, s)
                other = other if other in sizes else s
                return f"{other}*{s}"
            plain = re.fullmatch(r"\s*(\w+)\s*(?:[-+]\s*\d+\s*)?", sub)
            if plain and bounds.get(plain.group(1)) in sizes and best is None:
                best = bounds[plain.group(1)]
    return best


# --------------------------------------------------------------------------- degree


def _expr_degree(expr: str, env: dict[str, int]) -> int:
    """How many size factors an expression multiplies: ``N * N`` -> 2, ``x.size()`` -> len(x)'s."""
    expr = re.sub(r"\b(\w+)\s*\.\s*size\s*\(\s*\)", r"len_\1", expr)
    total = 0
    for factor in re.split(r"\*", expr):
        total += max((env.get(w, 0) for w in re.findall(r"[A-Za-z_]\w*", factor)), default=0)
    return total


def _loop_degree(lp: Loop, env: dict[str, int], facts: Facts) -> int:
    if lp.kind == "range":
        m = re.search(r":\s*(\w+)\s*$", lp.header)
        return env.get(f"len_{_root(m.group(1), facts)}", 1) if m else 1
    if lp.kind == "for":
        parts = lp.header.split(";")
        if len(parts) >= 3 and re.search(r"\*=|/=|<<=|>>=", parts[2]):
            return 0  # doubling or halving: logarithmic
        m = re.search(r"(?:<|<=|!=)\s*(.+)", parts[1] if len(parts) >= 2 else "")
        return _expr_degree(m.group(1), env) if m else 1
    m = re.search(r"\b\w+\s*(?:<|<=|!=)\s*(.+)", lp.header)
    return _expr_degree(m.group(1), env) if m else 1


def _algorithm_degree(text: str, env: dict[str, int], facts: Facts) -> int:
    best = 0
    for m in re.finditer(r"std::(\w+)\s*\(\s*(\w+)\s*\.\s*begin", text):
        if m.group(1) in _ALGORITHMS:
            best = max(best, env.get(f"len_{_root(m.group(2), facts)}", 1))
    return best


def work_degree(loops: list[Loop], env: dict[str, int], facts: Facts) -> int:
    """The deepest nest of loops, each weighted by the degree of its bound."""
    best = 0
    for lp in loops:
        d = _loop_degree(lp, env, facts)
        inner = dict(env)
        if lp.var:
            inner[lp.var] = d
        best = max(best, d + max(work_degree(lp.children, inner, facts), _algorithm_degree(lp.body, inner, facts)))
    return best


def _length_degree(expr: str, sizes: set[str]) -> int:
    try:
        node = ast.parse(str(expr), mode="eval").body
    except SyntaxError:
        return 1

    def deg(n: ast.AST) -> int:
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Mult):
            return deg(n.left) + deg(n.right)
        if isinstance(n, ast.BinOp):
            return max(deg(n.left), deg(n.right))
        return 1 if isinstance(n, ast.Name) and n.id in sizes else 0

    return deg(node)


def read_draft(source: str, function: str) -> tuple[Signature, Facts]:
    sig = parse_signature(source, function)
    return sig, read_facts(source, function, [p.name for p in sig.params])


def infer_spec(source: str, function: str, *, support: str = "") -> SpecDraft:
    """The driver plan of ``function`` as its source and doc comment tell it; ``support``:
    definitions of helpers the source declares but does not define, when the caller has them."""
    sig, facts = read_draft(source, function)
    sizes = size_params(sig, facts)
    draft = SpecDraft(constraints={"args": {}})
    args: dict[str, dict[str, Any]] = draft.constraints["args"]
    var_names = sizes or ["n"]
    lengths = _lengths(sig, facts, sizes, draft)
    for name, expr in lengths.items():
        args.setdefault(name, {})["len"] = expr
    c_domains.apply_rules(sig, facts, sizes, lengths, draft.constraints, draft.notes)
    env = {v: 1 for v in var_names}
    env.update({f"len_{p}": _length_degree(e, set(var_names)) for p, e in lengths.items()})
    for p in sig.params:
        if is_container(p):
            env.setdefault(f"len_{p.name}", _length_degree(_length_expr(args.get(p.name, {}), var_names[0]), set(var_names)))
    env.update({a: env.get(f"len_{v[4:]}", 1) for a, v in facts.aliases.items() if v.startswith("len:")})
    for a, v in facts.aliases.items():
        if v.startswith("copy:"):
            env[f"len_{a}"] = env.get(f"len_{v[5:]}", 1)
    draft.degree = max(1, work_degree(facts.loops, env, facts), _algorithm_degree(facts.body, env, facts),
                       *(env.get(f"len_{p.name}", 0) for p in sig.params if is_container(p) and not p.is_output))
    draft.constraints["vars"] = {v: _sizes(draft.degree, pow2=v in draft.constraints.get("_pow2", ())) for v in var_names}
    draft.constraints.pop("_pow2", None)
    draft.notes.append(f"work grows as size^{draft.degree}")
    _helpers(facts, support, draft)
    draft.constraints["args"] = {k: v for k, v in args.items() if v}
    if not draft.constraints["args"]:
        del draft.constraints["args"]
    return draft


def _length_expr(spec: dict[str, Any], default: str) -> str:
    """How many elements a container holds: a sparse matrix's entries come from every cell."""
    if "coo" in spec:
        return f"{spec['coo']['rows']}*{spec['coo']['cols']}"
    return str(spec.get("len", default))


def _lengths(sig: Signature, facts: Facts, sizes: list[str], draft: SpecDraft) -> dict[str, str]:
    """Each plain container's length expression, from the doc's shapes, else its subscripts."""
    if not sizes:
        return {}
    shapes = doc_shapes(sig, facts.doc, sizes)
    bounds = _loop_bounds(facts.loops)
    out: dict[str, str] = {}
    for p in sig.params:
        if not is_container(p) or (coo_fields(sig, p) and re.search(r"\bCOO\b|sparse", facts.doc, re.I)):
            continue  # a sparse matrix's entries: its length follows from the matrix (c_domains)
        if p.name in shapes:
            out[p.name] = "*".join(shapes[p.name])
            draft.notes.append(f"{p.name}: length {out[p.name]} (doc)")
        elif (found := _indexed_length(p.name, facts, sizes, bounds)) is not None:
            out[p.name] = found
            draft.notes.append(f"{p.name}: length {found} (subscripts)")
    return out


def _sizes(degree: int, pow2: bool) -> dict[str, Any]:
    """Small sizes drawn for correctness; medium and large so the work is about MEDIUM_WORK and
    LARGE_WORK steps whatever the degree."""
    def size(work: int) -> int:
        s = max(2, int(round(work ** (1.0 / degree))))
        return 1 << (s.bit_length() - 1) if pow2 else s

    spec: dict[str, Any] = {"small": [1, 16 if degree == 1 else 8], "medium": size(MEDIUM_WORK), "large": size(LARGE_WORK)}
    if pow2:
        spec["pow2"] = True
    return spec


def _helpers(facts: Facts, support: str, draft: SpecDraft) -> None:
    """Helpers the reference calls that the source only declares: linked from ``support``, or missing."""
    needed = sorted(facts.declared_only & facts.called)
    if not needed:
        return
    if support:
        draft.constraints["support"] = support
        draft.notes.append(f"linked with the given definitions of {', '.join(needed)}")
        return
    draft.missing = needed
    draft.notes.append(f"the reference calls {', '.join(needed)}, declared but defined nowhere in its source")
