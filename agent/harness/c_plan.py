"""The driver plan of a C/C++ function: its size variables, and the expressions behind ``P``.

Each test is a seed and a vector ``P`` of numbers (sizes, ranges, fixed values) computed here
from the test's size variables; the generated driver (``c_driver``) builds the inputs from
them, so both sides see the same data.

Constraints (a mapping, e.g. from a JSON file), all optional:

``vars``      size variables: ``{"N": {"small": [2, 8], "medium": 64, "large": 600}}``
              (``"pow2": true`` draws powers of two; ``"min"``: the smallest size the
              function accepts, where edge cases may go below the small range, e.g. 0);
              small tests draw from the range, one medium test exposes races, the timing
              input uses large. Default: ``{"n": {"small": [1, 16], "medium": 2048,
              "large": 1048576}}``.
``args``      per parameter: ``len`` (containers and pointers; an expression in the vars and
              ``len(other)``; default the first var), ``value`` (scalars: a fixed
              expression; default the var of the same name if there is one), ``range``
              ``[lo, hi]`` (scalars and elements), ``init`` (``"zero"`` or ``"random"`` for
              written containers; default zero when the function also has read-only inputs),
              ``elem`` (spec of the elements), ``fields`` (specs of struct fields),
              ``charset``/``strlen`` (strings), ``bernoulli`` (an expression p: elements are 1 with
              probability p, else 0), ``sorted``, ``unique``, ``sorted_by``,
              ``unique_by`` (struct fields), ``symmetric``/``zero_diagonal``/
              ``diag_dominant`` (an expression N: the container is an NxN row-major matrix),
              ``coo`` ``{"rows", "cols", "density", "diagonal", "row", "col"}`` (a vector of
              structs that are the entries of a sparse matrix, sorted by row then column).
``support``   code appended to each side when the source declares but does not define it.
``edge``      extra inputs: ``{"vars": {...}}`` and/or ``{"values": {param: literal}}``.
``unordered``, ``float_rel``, ``float_abs``: comparison settings.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bakeoff.agent.harness.c_signature import Signature

DEFAULT_VARS: dict[str, dict[str, Any]] = {"n": {"small": [1, 16], "medium": 2048, "large": 1 << 20}}


class ConstraintError(ValueError):
    """The constraints name an unknown parameter or hold an expression that cannot be read."""


# --------------------------------------------------------------------------- expressions

_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}


def evaluate(expr: Any, env: Mapping[str, float], lengths: Mapping[str, Any] | None = None) -> float:
    """Arithmetic over numbers, vars, ``len(param)``, ``min``/``max``; nothing else runs."""
    if isinstance(expr, bool):
        return float(expr)
    if isinstance(expr, int | float):
        return float(expr)
    if not isinstance(expr, str):
        raise ConstraintError(f"not an expression: {expr!r}")

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.Name):
            if node.id not in env:
                raise ConstraintError(f"unknown name {node.id!r} in {expr!r}")
            return float(env[node.id])
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            try:
                return float(_BINOPS[type(node.op)](ev(node.left), ev(node.right)))
            except (ArithmeticError, ValueError, TypeError) as exc:  # x / 0, 10.0 ** 400, (-8) ** 0.5 (complex)
                raise ConstraintError(f"{expr!r} cannot be computed: {exc}") from None
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "len" and len(node.args) == 1 and isinstance(node.args[0], ast.Name):
                target = node.args[0].id
                if lengths is None or target not in lengths:
                    raise ConstraintError(f"len({target}) in {expr!r}: {target} has no length expression")
                return evaluate(lengths[target], env, lengths)
            if node.func.id in ("min", "max") and node.args:
                vals = [ev(a) for a in node.args]
                return min(vals) if node.func.id == "min" else max(vals)
        raise ConstraintError(f"unsupported expression {expr!r}")

    return ev(ast.parse(expr, mode="eval").body)


# --------------------------------------------------------------------------- the plan


@dataclass
class DriverPlan:
    """What the generated code needs from Python per test: the expressions behind P."""

    signature: Signature
    constraints: Mapping[str, Any]
    slots: list[Any] = field(default_factory=list)  # expression per P index
    lengths: dict[str, Any] = field(default_factory=dict)  # param -> len expression

    @property
    def vars(self) -> dict[str, dict[str, Any]]:
        return dict(self.constraints.get("vars") or DEFAULT_VARS)

    def slot(self, expr: Any) -> str:
        # Every side's code is generated from the same plan: an expression already in a slot
        # reuses it, so the slots do not grow with each candidate built.
        for i, known in enumerate(self.slots):
            if type(known) is type(expr) and known == expr:
                return f"P[{i}]"
        self.slots.append(expr)
        return f"P[{len(self.slots) - 1}]"

    def values(self, var_values: Mapping[str, float]) -> list[float]:
        return [evaluate(e, var_values, self.lengths) for e in self.slots]


def arg_specs(sig: Signature, constraints: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    given = dict(constraints.get("args") or {})
    names = {p.name for p in sig.params}
    for unknown in set(given) - names:
        raise ConstraintError(f"constraints name argument {unknown!r}, which {sig.name}() does not have")
    return {p.name: dict(given.get(p.name) or {}) for p in sig.params}


def build_plan(sig: Signature, constraints: Mapping[str, Any]) -> DriverPlan:
    plan = DriverPlan(sig, constraints)
    first_var = next(iter(plan.vars))
    specs = arg_specs(sig, constraints)
    for p in sig.params:
        if (p.is_pointer or p.type.kind == "vector") and "coo" not in specs[p.name]:
            plan.lengths[p.name] = specs[p.name].get("len", first_var)
    return plan


def literal_digest(literals: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps([lit.get("values") or {} for lit in literals], sort_keys=True)


def draw_vars(vars_spec: Mapping[str, Mapping[str, Any]], rng: random.Random, size: str) -> dict[str, float]:
    """Concrete var values for one test: ``size`` is small (drawn), medium or large."""
    out: dict[str, float] = {}
    for name, spec in vars_spec.items():
        v = spec.get(size)
        if v is None:
            v = spec.get("small", [1, 16])
        if isinstance(v, list):
            lo, hi = v
            if spec.get("pow2"):
                v = 2 ** rng.randint(int(math.log2(max(lo, 1))), int(math.log2(max(hi, 1))))
            else:
                v = rng.randint(int(lo), int(hi))
        out[name] = float(v)
    return out
