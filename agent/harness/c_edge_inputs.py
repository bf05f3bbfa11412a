"""Edge-case inputs for a C/C++ differential harness, checked against its driver plan.

A tester's proposal is a mapping ``{"vars": {...}, "values": {...}}`` (what
``CHarness.make_tests(extra_inputs)`` takes): sizes for the plan's size variables, and
literal arguments. An input reaches the reference only when the driver can build it and its
literal arguments agree with its sizes and with the domain the constraints state; each one
left out gives a note saying why. Pure: model text and a plan in, inputs and notes out.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bakeoff.agent.harness.c_plan import ConstraintError, DriverPlan, evaluate
from bakeoff.agent.harness.c_signature import CType, Param, Signature
from bakeoff.agent.harness.edge_text import MAX_INPUTS, Rejected, capped, gist, json_items

# Literal arguments are compiled into every side of the C/C++ driver; edge cases are small.
MAX_LITERAL_ELEMENTS = 4096
# The largest size allowed is the largest the correctness tests already run (a size
# variable's medium, else the top of its small range), and at least this much, so that sizes
# just past a multiple of 8 or 16 threads stay allowed where the small range is tiny.
SIZE_FLOOR = 64


@dataclass(frozen=True)
class SizeDomain:
    """The sizes a model may propose for one size variable of the driver plan."""

    lo: int
    hi: int
    pow2: bool = False


def size_domains(plan: DriverPlan) -> dict[str, SizeDomain]:
    """Per size variable: from 0 (or, when the constraints name the variable, its ``min``, else
    the bottom of its small range: the domain they state) up to the largest size the
    correctness tests run."""
    explicit = bool(plan.constraints.get("vars"))
    out: dict[str, SizeDomain] = {}
    for name, spec in plan.vars.items():
        small = spec.get("small", [1, 16])
        sizes = [float(x) for x in (small if isinstance(small, list) else [small])]
        medium = spec.get("medium")
        top = max([*sizes, *([float(medium)] if isinstance(medium, int | float) else [])], default=0.0)
        lo = int(spec["min"]) if isinstance(spec.get("min"), int | float) else (int(min(sizes)) if explicit and sizes else 0)
        out[name] = SizeDomain(lo=lo,
                               hi=max(int(top), SIZE_FLOOR), pow2=bool(spec.get("pow2")))
    return out


def _storage(p: Param) -> CType:
    return CType("vector", elem=p.type) if p.is_pointer else p.type


def _name(given: Any, known: Sequence[str], what: str) -> str:
    """``given`` as one of ``known``: exactly, else ignoring case when that is unambiguous."""
    if isinstance(given, str) and given in known:
        return given
    folded = [k for k in known if isinstance(given, str) and k.lower() == given.lower()]
    if len(folded) == 1:
        return folded[0]
    raise Rejected(f"unknown {what} {given!r} (known: {', '.join(known) or 'none'})")


def _whole(value: Any, what: str) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value != int(value):
        raise Rejected(f"{what}={value!r} is not a whole number")
    return int(value)


def _size(name: str, value: Any, domain: SizeDomain) -> int:
    n = _whole(value, f"size {name}")
    if n < 0:
        raise Rejected(f"size {name}={n} is negative")
    if n > domain.hi:
        raise Rejected(f"size {name}={n} is over {domain.hi}, the largest the correctness tests use")
    if n < domain.lo:
        raise Rejected(f"size {name}={n} is under {domain.lo}, the smallest the constraints allow")
    if domain.pow2 and (n < 1 or n & (n - 1)):
        raise Rejected(f"size {name}={n} is not a power of two, as the constraints require")
    return n


def _zero(t: CType, sig: Signature) -> Any:
    if t.kind == "scalar":
        return {"bool": False, "float": 0.0}.get(t.scalar_class, 0)
    if t.kind == "string":
        return ""
    if t.kind == "complex":
        return [0.0, 0.0]
    if t.kind == "struct":
        return {f: _zero(ft, sig) for f, ft in sig.structs[t.name].fields}
    return []


class _Literal:
    """Checks a JSON value against a C/C++ type and returns it in the shape ``c_driver`` writes."""

    def __init__(self, sig: Signature):
        self.sig = sig
        self.elements = 0

    def __call__(self, v: Any, t: CType, where: str) -> Any:
        self.elements += 1
        if self.elements > MAX_LITERAL_ELEMENTS:
            raise Rejected(f"literal arguments hold over {MAX_LITERAL_ELEMENTS} values")
        if t.kind == "scalar":
            return self.scalar(v, t, where)
        if t.kind == "string":
            if not isinstance(v, str):
                raise Rejected(f"{where} must be a string, not {v!r:.40}")
            return v
        if t.kind == "complex":
            parts = [v.get("re", 0), v.get("im", 0)] if isinstance(v, dict) else (v if isinstance(v, list) else [v, 0])
            if len(parts) != 2:
                raise Rejected(f"{where} must be a complex number: [re, im]")
            return [self.number(x, where) for x in parts]
        if t.kind == "struct":
            return self.struct(v, t, where)
        if t.kind in ("vector", "array"):
            assert t.elem is not None
            if isinstance(v, str) and t.elem.kind == "scalar" and t.elem.scalar_class == "char":
                v = list(v)
            if not isinstance(v, list):
                raise Rejected(f"{where} must be a list, not {v!r:.40}")
            if t.kind == "array" and t.size is not None and len(v) > t.size:
                raise Rejected(f"{where} has {len(v)} elements, more than its std::array's {t.size}")
            return [self(x, t.elem, f"{where}[{i}]") for i, x in enumerate(v)]
        raise Rejected(f"{where}: no literal of type {t.spell()}")

    def struct(self, v: Any, t: CType, where: str) -> dict[str, Any]:
        fields = self.sig.structs[t.name].fields
        names = [f for f, _ in fields]
        if isinstance(v, list):
            if len(v) > len(fields):
                raise Rejected(f"{where} has {len(v)} fields, struct {t.name} has {len(fields)}")
            v = dict(zip(names, v, strict=False))
        if not isinstance(v, dict):
            raise Rejected(f"{where} must be an object with the fields of struct {t.name}")
        for unknown in set(v) - set(names):
            raise Rejected(f"{where}: struct {t.name} has no field {unknown!r}")
        # Every field written out: the driver writes a missing field as 0, which no vector takes.
        return {f: self(v[f], ft, f"{where}.{f}") if f in v else _zero(ft, self.sig) for f, ft in fields}

    @staticmethod
    def number(v: Any, where: str) -> float | int:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            # JSON has no infinity; Python's reader takes "Infinity" and "NaN", C++ has no such literal.
            raise Rejected(f"{where} must be a finite number, not {v!r:.40}")
        return v

    def scalar(self, v: Any, t: CType, where: str) -> Any:
        cls = t.scalar_class
        if cls == "bool":
            if isinstance(v, bool) or (isinstance(v, int) and v in (0, 1)):
                return bool(v)
            raise Rejected(f"{where} must be true or false, not {v!r:.40}")
        if cls == "char":
            if isinstance(v, str) and len(v) == 1 and ord(v) < 256:
                return v
            if isinstance(v, int) and not isinstance(v, bool) and -128 <= v < 256:
                return v
            raise Rejected(f"{where} must be one character, not {v!r:.40}")
        if cls == "float":
            return float(self.number(v, where))
        n = _whole(v, where)
        lo, hi = (0, 1 << 64) if cls == "uint" else (-(1 << 63), 1 << 63)
        if not lo <= n < hi:
            raise Rejected(f"{where}={n} does not fit a {t.name}")
        return n


# Constraints that give an argument a shape (a sparse matrix, a symmetric one, a value set...)
# beyond what a literal can be checked against here: such an argument takes sizes, not literals.
_SHAPES = ("coo", "symmetric", "zero_diagonal", "diag_dominant", "sorted_by", "unique_by", "bernoulli",
           "charset", "fields", "strlen")
_EXPR_KEYS = ("len", "value", "range", "bernoulli", "strlen", "symmetric", "zero_diagonal", "diag_dominant")


def _expressions(spec: Mapping[str, Any]) -> list[Any]:
    """Every size expression in one argument's constraints (nested element and field specs too)."""
    out: list[Any] = []
    for key in _EXPR_KEYS:
        v = spec.get(key)
        out.extend(v if isinstance(v, list) else [] if v is None else [v])
    coo = spec.get("coo")
    if isinstance(coo, Mapping):
        out.extend(coo.get(k) for k in ("rows", "cols", "density") if coo.get(k) is not None)
    for nested in (spec.get("elem"), *(dict(spec.get("fields") or {}).values())):
        if isinstance(nested, Mapping):
            out.extend(_expressions(nested))
    return out


def _in_domain(name: str, value: Any, spec: Mapping[str, Any], env: Mapping[str, float], plan: DriverPlan) -> None:
    """A literal (a scalar, or a list of scalars) inside the range, order and uniqueness its
    constraints state: they describe the function's domain, and an input outside it is no test."""
    scalars = value if isinstance(value, list) else [value]
    if any(isinstance(x, list | dict) for x in scalars):
        return
    bounds = spec.get("range") or dict(spec.get("elem") or {}).get("range")
    if bounds and isinstance(bounds, list) and len(bounds) == 2:
        lo, hi = (evaluate(b, env, plan.lengths) for b in bounds)
        outside = [x for x in scalars if isinstance(x, int | float) and not lo <= x <= hi]
        if outside:
            raise Rejected(f"{name} holds {outside[0]!r}, outside its range [{lo:g}, {hi:g}]")
    if spec.get("sorted") and scalars != sorted(scalars):
        raise Rejected(f"{name} must be sorted")
    if spec.get("unique") and len(set(map(repr, scalars))) != len(scalars):
        raise Rejected(f"{name} must hold no duplicates")



class _Sizes:
    """The sizes an input sets so far, each checked against its domain and set only once."""

    def __init__(self, domains: Mapping[str, SizeDomain]):
        self.domains = domains
        self.known: dict[str, int] = {}

    def set(self, name: str, n: Any, why: str) -> None:
        n = _size(name, n, self.domains[name])
        if self.known.setdefault(name, n) != n:
            raise Rejected(f"size {name} is {self.known[name]}, but {why} makes it {n}")


def _literal_values(raw_values: Mapping[str, Any], plan: DriverPlan, sizes: _Sizes) -> dict[str, Any]:
    """The literal arguments, checked against their types; a literal tied to a size sets that size."""
    sig = plan.signature
    args = dict(plan.constraints.get("args") or {})
    literal = _Literal(sig)
    values: dict[str, Any] = {}
    for given, v in raw_values.items():
        p = sig.param(_name(given, [q.name for q in sig.params], "parameter"))
        spec = dict(args.get(p.name) or {})
        if _storage(p).kind == "scalar" and ("value" in spec or p.name in plan.vars):
            # The driver computes this argument from the sizes; a literal would disagree with them.
            tied = spec.get("value", p.name)
            if not (isinstance(tied, str) and tied in plan.vars):
                raise Rejected(f"{p.name} is computed from the sizes ({tied}): propose the sizes instead")
            sizes.set(tied, v, f"{p.name}={v!r}")
            continue
        shaped = [k for k in _SHAPES if k in spec or k in dict(spec.get("elem") or {})]
        if shaped:
            raise Rejected(f"{p.name}'s constraints shape it ({', '.join(shaped)}): propose sizes for it instead")
        values[p.name] = literal(v, _storage(p), p.name)
        length = plan.lengths.get(p.name)
        if isinstance(length, str) and length in plan.vars:
            sizes.set(length, len(values[p.name]), f"{p.name}'s {len(values[p.name])} elements")
    return values


def _check_end(end: int, sizes: Mapping[str, int], values: Mapping[str, Any], plan: DriverPlan) -> None:
    """Every constraint of every argument usable, and every literal of the right length and in
    its domain, with the sizes left out at the low (``end`` 0) or high (1) end of their small range."""
    args = dict(plan.constraints.get("args") or {})
    env: dict[str, float] = {}
    for name, spec in plan.vars.items():
        small = spec.get("small", [1, 16])
        env[name] = float(sizes.get(name, (small if isinstance(small, list) else [small, small])[end]))
    for p in plan.signature.params:
        spec = dict(args.get(p.name) or {})
        try:
            for expr in _expressions(spec):
                evaluate(expr, env, plan.lengths)
            length = evaluate(plan.lengths[p.name], env, plan.lengths) if p.name in plan.lengths else None
        except (ConstraintError, ArithmeticError) as exc:
            raise Rejected(f"the sizes {dict(sizes)} leave {p.name}'s constraints unusable: {exc}") from exc
        if length is not None and length < 0:
            raise Rejected(f"the sizes {dict(sizes)} give {p.name} a negative length")
        if p.name not in values:
            continue
        if length is not None and length != len(values[p.name]):
            raise Rejected(f"{p.name} has {len(values[p.name])} elements but the sizes make it "
                           f"{plan.lengths[p.name]} = {length:g}: give the sizes that match")
        _in_domain(p.name, values[p.name], spec, env, plan)


def check_c_input(item: Any, plan: DriverPlan, domains: Mapping[str, SizeDomain] | None = None) -> dict[str, Any]:
    """One proposed input as ``CHarness.make_tests`` takes it, or ``ValueError`` saying why not."""
    domains = domains or size_domains(plan)
    if not isinstance(item, Mapping):
        raise Rejected(f"not an object: {item!r:.60}")
    raw_vars, raw_values = item.get("vars") or {}, item.get("values") or {}
    if not isinstance(raw_vars, Mapping) or not isinstance(raw_values, Mapping):
        raise Rejected("'vars' and 'values' must be objects")
    if not raw_vars and not raw_values:
        raise Rejected(f"neither 'vars' nor 'values' in {json.dumps(item)[:80]}")
    sizes = _Sizes(domains)
    for given, n in raw_vars.items():
        sizes.set(_name(given, list(plan.vars), "size variable"), n, "another entry")
    values = _literal_values(raw_values, plan, sizes)
    # Sizes left out are drawn from their small range: every expression must work at both ends.
    for end in (0, 1):
        _check_end(end, sizes.known, values, plan)
    return {k: v for k, v in (("vars", sizes.known), ("values", values)) if v}


def parse_c_inputs(text: str, plan: DriverPlan, limit: int = MAX_INPUTS) -> tuple[list[dict[str, Any]], list[str]]:
    """The usable inputs in a tester's answer for a C/C++ function, and a note per one left out."""
    items, whole = json_items(text)
    if not items:
        return [], [f"edge inputs: the tester's answer proposed no input in JSON ({gist(text)})"]
    domains = size_domains(plan)
    kept: list[dict[str, Any]] = []
    seen: set[str] = set()
    # The objects around a broken one are read; what was inside the broken one is lost.
    notes: list[str] = [] if whole else ["edge inputs: part of the tester's answer was not valid JSON; the objects that were are read"]
    for i, item in enumerate(items, 1):
        try:
            checked = check_c_input(item, plan, domains)
        except Rejected as why:
            notes.append(f"edge input {i} left out: {why}")
            continue
        key = json.dumps(checked, sort_keys=True)
        if key in seen:
            notes.append(f"edge input {i} left out: the same as an earlier one")
            continue
        seen.add(key)
        kept.append(checked)
    return capped(kept, notes, limit)


def c_prompt_parts(plan: DriverPlan) -> dict[str, Any]:
    sig = plan.signature
    domains = size_domains(plan)
    args = dict(plan.constraints.get("args") or {})
    sizes = []
    for name, d in domains.items():
        drives = [f"the length of `{p}`" for p, e in plan.lengths.items() if isinstance(e, str) and re.search(rf"\b{re.escape(name)}\b", e)]
        drives += [f"the value of `{p.name}`" for p in sig.params
                   if _storage(p).kind == "scalar" and dict(args.get(p.name) or {}).get("value", p.name if p.name in plan.vars else None) == name]
        sizes.append({"name": name, "lo": d.lo, "hi": d.hi, "pow2": d.pow2, "drives": ", ".join(drives)})
    params = []
    for p in sig.params:
        notes = ["written by the function"] if p.is_output else []
        if p.is_pointer:
            notes.append("give a list of its elements")
        if p.name in plan.lengths:
            notes.append(f"length {plan.lengths[p.name]}")
        spelled = ("const " if p.passing == "cpointer" else "") + p.type.spell() + ("*" if p.is_pointer else "")
        params.append({"name": p.name, "type": spelled, "note": "; ".join(notes)})
    first = next(iter(domains))
    example: list[dict[str, Any]] = [{"vars": {first: domains[first].lo}}]
    # A literal in the example only where it is surely valid: three plain elements, no constraints.
    container = next((p for p in sig.params if isinstance(plan.lengths.get(p.name), str) and plan.lengths[p.name] in plan.vars
                      and set(dict(args.get(p.name) or {})) <= {"len"} and not domains[plan.lengths[p.name]].pow2
                      and domains[plan.lengths[p.name]].lo <= 3 <= domains[plan.lengths[p.name]].hi
                      and _storage(p).elem is not None and _storage(p).elem.kind == "scalar"), None)
    if container is not None:
        elem = _storage(container).elem
        assert elem is not None
        sample = {"float": [1.5, 1.5, -0.5], "bool": [True, False, True], "uint": [2, 2, 0], "char": ["a", "a", "b"]}
        example.append({"vars": {plan.lengths[container.name]: 3},
                        "values": {container.name: sample.get(elem.scalar_class, [2, 2, -1])}})
    return {"kind": "c", "sizes": sizes, "params": params, "example": json.dumps(example)}
