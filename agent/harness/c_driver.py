"""Generating the per-side C++ code of a differential driver from a signature and constraints.

Each side (the reference, or one candidate) is compiled with a generated ``bk_<side>_run``
that builds the inputs from a seed and a vector ``P`` of numbers (sizes, ranges), calls the
function with ``threads`` OpenMP threads, times the call alone and serializes the return
value and every non-const reference or pointer argument. Inputs are a pure function of
(seed, P, literal), so both sides see the same data. The plan (size variables, the
constraints, the expressions behind ``P``) is ``c_plan``'s.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from bakeoff.agent.harness.c_plan import ConstraintError, DriverPlan, arg_specs
from bakeoff.agent.harness.c_signature import CType, Param, Signature, SignatureError

_DEFAULT_RANGES = {"int": [-100, 100], "uint": [0, 100], "float": [-10.0, 10.0]}
_LOWER = "abcdefghijklmnopqrstuvwxyz"


# --------------------------------------------------------------------------- code generation


def _cstr(s: str) -> str:
    return json.dumps(s)


class _Gen:
    def __init__(self, plan: DriverPlan, ns: str):
        self.plan = plan
        self.ns = ns  # e.g. "::bk_cand"
        self.lines: list[str] = []
        self.depth = 0

    def emit(self, line: str) -> None:
        self.lines.append("  " * (self.depth + 1) + line)

    def loopvar(self) -> str:
        return f"i{len(self.lines)}"

    def value(self, lhs: str, t: CType, spec: Mapping[str, Any]) -> None:
        """Code that assigns a random value of type ``t`` to ``lhs``."""
        if "value" in spec:
            self.emit(f"{lhs} = ({t.spell(self.ns)}){self.plan.slot(spec['value'])};")
        elif "bernoulli" in spec:
            self.emit(f"{lhs} = R.uniform() < {self.plan.slot(spec['bernoulli'])} ? 1 : 0;")
        elif t.kind == "scalar":
            cls = t.scalar_class
            if cls == "bool":
                self.emit(f"{lhs} = R.bit();")
            elif cls == "char":
                cs = spec.get("charset", _LOWER)
                self.emit(f"{lhs} = {_cstr(cs)}[R.integer(0, {len(cs) - 1})];")
            else:
                lo, hi = spec.get("range", _DEFAULT_RANGES[cls])
                fn = "real" if cls == "float" else "integer"
                self.emit(f"{lhs} = ({t.name})R.{fn}({self.plan.slot(lo)}, {self.plan.slot(hi)});")
        elif t.kind == "string":
            lo, hi = spec.get("strlen", [1, 8])
            cs = spec.get("charset", _LOWER)
            i = self.loopvar()
            self.emit(f"{lhs}.assign((size_t)R.integer({self.plan.slot(lo)}, {self.plan.slot(hi)}), ' ');")
            self.emit(f"for (size_t {i} = 0; {i} < {lhs}.size(); ++{i}) {lhs}[{i}] = {_cstr(cs)}[R.integer(0, {len(cs) - 1})];")
        elif t.kind == "complex":
            assert t.elem is not None
            lo, hi = spec.get("range", _DEFAULT_RANGES["float"])
            a, b = self.plan.slot(lo), self.plan.slot(hi)
            self.emit(f"{{ double re_ = R.real({a}, {b}); double im_ = R.real({a}, {b}); {lhs} = {t.spell(self.ns)}(re_, im_); }}")
        elif t.kind == "struct":
            sdef = self.plan.signature.structs[t.name]
            fields = spec.get("fields") or {}
            for unknown in set(fields) - {f for f, _ in sdef.fields}:
                raise ConstraintError(f"struct {t.name} has no field {unknown!r}")
            for fname, ftype in sdef.fields:
                self.value(f"{lhs}.{fname}", ftype, fields.get(fname) or {})
        elif t.kind in ("vector", "array"):
            assert t.elem is not None
            self.container(lhs, t, spec.get("elem") or {}, spec.get("len", next(iter(self.plan.vars))), "random")
        else:
            raise SignatureError(f"cannot generate a value of type {t.spell()}")

    def container(self, lhs: str, t: CType, elem_spec: Mapping[str, Any], length: Any, init: str) -> None:
        """``t`` is the storage type (vector or array)."""
        assert t.elem is not None
        if t.kind == "vector":
            self.emit(f"{lhs}.assign((size_t){self.plan.slot(length)}, {t.elem.spell(self.ns)}());")
        else:
            self.emit(f"{lhs}.fill({t.elem.spell(self.ns)}());")
        if init == "zero":
            return
        i = self.loopvar()
        self.emit(f"for (size_t {i} = 0; {i} < {lhs}.size(); ++{i}) {{")
        self.depth += 1
        if t.elem.kind == "scalar" and t.elem.scalar_class == "bool":
            self.emit(f"{lhs}[{i}] = R.bit();")
        else:
            self.value(f"{lhs}[{i}]", t.elem, elem_spec)
        self.depth -= 1
        self.emit("}")

    def post(self, lhs: str, t: CType, spec: Mapping[str, Any]) -> None:
        """Shape constraints applied after the random fill, identically on both sides."""
        elem = t.elem
        if spec.get("unique") or spec.get("unique_by"):
            def key_of(v: str) -> str:
                by = spec.get("unique_by")
                return v if not by else "std::make_tuple(" + ", ".join(f"{v}.{f}" for f in by) + ")"

            key = key_of("e_")
            self.emit(f"{{ std::set<std::decay_t<decltype({key_of(lhs + '[0]')})>> seen_; for (auto& e_ : {lhs}) {{")
            self.depth += 1
            self.emit(f"for (int try_ = 0; seen_.count({key}) && try_ < 1000; ++try_) {{")
            self.depth += 1
            assert elem is not None
            self.value("e_", elem, spec.get("elem") or {})
            self.depth -= 1
            self.emit(f"}} seen_.insert({key});")
            self.depth -= 1
            self.emit("} }")
        if spec.get("sorted") or spec.get("sorted_by"):
            if spec.get("sorted_by"):
                tie = lambda v: "std::make_tuple(" + ", ".join(f"{v}.{f}" for f in spec["sorted_by"]) + ")"  # noqa: E731
                self.emit(f"std::sort({lhs}.begin(), {lhs}.end(), [](const auto& a_, const auto& b_) {{ return {tie('a_')} < {tie('b_')}; }});")
            else:
                self.emit(f"std::sort({lhs}.begin(), {lhs}.end());")
        for key, code in (
            ("symmetric", "for (size_t r_ = 0; r_ < n_; ++r_) for (size_t c_ = 0; c_ < r_; ++c_) {L}[r_ * n_ + c_] = {L}[c_ * n_ + r_];"),
            ("zero_diagonal", "for (size_t r_ = 0; r_ < n_; ++r_) {L}[r_ * n_ + r_] = 0;"),
            ("diag_dominant", "for (size_t r_ = 0; r_ < n_; ++r_) { double s_ = 1; for (size_t c_ = 0; c_ < n_; ++c_) if (c_ != r_) s_ += std::fabs((double){L}[r_ * n_ + c_]); {L}[r_ * n_ + r_] = s_; }"),
        ):
            if key in spec:
                self.emit(f"{{ size_t n_ = (size_t){self.plan.slot(spec[key])}; if ({lhs}.size() >= n_ * n_) {{ {code.replace('{L}', lhs)} }} }}")

    def coo(self, lhs: str, t: CType, spec: Mapping[str, Any]) -> None:
        c = spec["coo"]
        assert t.elem is not None and t.elem.kind == "struct"
        row, col = c.get("row", "row"), c.get("col", "column")
        sdef = self.plan.signature.structs[t.elem.name]
        fields = spec.get("fields") or {}
        self.emit(f"{lhs}.clear();")
        rows, cols, dens = self.plan.slot(c["rows"]), self.plan.slot(c["cols"]), self.plan.slot(c.get("density", 0.2))
        diag = "true" if c.get("diagonal") else "false"
        self.emit(f"for (size_t r_ = 0; r_ < (size_t){rows}; ++r_) for (size_t c_ = 0; c_ < (size_t){cols}; ++c_) {{")
        self.depth += 1
        self.emit(f"if (!(({diag} && r_ == c_) || R.uniform() < {dens})) continue;")
        self.emit(f"{t.elem.spell(self.ns)} e_{{}};")
        for fname, ftype in sdef.fields:
            if fname not in (row, col):
                self.value(f"e_.{fname}", ftype, fields.get(fname) or {})
        self.emit(f"e_.{row} = r_; e_.{col} = c_; {lhs}.push_back(e_);")
        self.depth -= 1
        self.emit("}")


def _storage(p: Param) -> CType:
    return CType("vector", elem=p.type) if p.is_pointer else p.type


def _literal(value: Any, t: CType, sig: Signature, ns: str) -> str:
    """A JSON value as a C++ initializer of type ``t``."""
    if t.kind == "scalar":
        if t.scalar_class == "bool":
            return "true" if value else "false"
        if t.scalar_class == "char" and isinstance(value, str):
            return f"(char){ord(value[0]) if value else 0}"
        if t.scalar_class == "float":
            x = float(value)
            if math.isnan(x):
                return f"std::numeric_limits<{t.name}>::quiet_NaN()"
            if math.isinf(x):
                return f"{'-' if x < 0 else ''}std::numeric_limits<{t.name}>::infinity()"
            return repr(x)
        return f"({t.name}){int(value)}"
    if t.kind == "string":
        return f"std::string({_cstr(str(value))})"
    if t.kind == "complex":
        re_, im = (value.get("re", 0), value.get("im", 0)) if isinstance(value, dict) else (
            (value[0], value[1]) if isinstance(value, list | tuple) else (value, 0))
        return f"{t.spell(ns)}({float(re_)!r}, {float(im)!r})"
    if t.kind == "struct":
        sdef = sig.structs[t.name]
        if isinstance(value, dict):
            # A field the value leaves out is value-initialized (0, empty), whatever its type.
            parts = [_literal(value[f], ft, sig, ns) if f in value else f"{ft.spell(ns)}{{}}" for f, ft in sdef.fields]
        else:
            parts = [_literal(v, ft, sig, ns) for v, (_, ft) in zip(value, sdef.fields, strict=False)]
        return "{" + ", ".join(parts) + "}"
    if t.kind in ("vector", "array"):
        assert t.elem is not None
        return f"{t.spell(ns)}{{" + ", ".join(_literal(v, t.elem, sig, ns) for v in value) + "}"
    raise SignatureError(f"no literal of type {t.spell()}")


def _struct_serializers(sig: Signature) -> str:
    out = []
    for s in sig.structs.values():
        body = " ".join(f"bk_put(v, s.{f});" for f, _ in s.fields)
        out.append(f"inline void bk_put(::bk::Val& v, const {s.name}& s) {{ v.open('S', {len(s.fields)}); {body} }}")
    return "\n".join(out)


def _is_container(p: Param) -> bool:
    return p.is_pointer or p.type.kind in ("vector", "array", "string")


def default_init(sig: Signature, p: Param) -> str:
    """Written containers start zeroed when the function also reads other inputs (an output
    argument), random when they are its only data (an in-out argument)."""
    has_inputs = any(q is not p and not q.is_output and _is_container(q) for q in sig.params)
    return "zero" if has_inputs else "random"


def _generate_inputs(g: _Gen, plan: DriverPlan, literals: Sequence[Mapping[str, Any]]) -> None:
    """Code that makes each argument ``a<i>`` from the seed and ``P``, then sets the literal ones."""
    sig = plan.signature
    specs = arg_specs(sig, plan.constraints)
    for i, p in enumerate(sig.params):
        spec = specs[p.name]
        lhs = f"a{i}"
        st = _storage(p)
        g.emit(f"{st.spell(g.ns)} {lhs}{{}};")
        if "coo" in spec:
            g.coo(lhs, st, spec)
        elif st.kind in ("vector", "array"):
            init = spec.get("init") or (default_init(sig, p) if p.is_output else "random")
            elem_spec = spec.get("elem") or {k: v for k, v in spec.items() if k in ("range", "fields", "charset", "strlen", "bernoulli")}
            g.container(lhs, st, elem_spec, plan.lengths.get(p.name, 0), init)
        elif "value" in spec or p.name not in plan.vars:
            g.value(lhs, p.type, spec)
        else:
            g.value(lhs, p.type, {"value": p.name})
        g.post(lhs, st, spec)
    for k, lit in enumerate(literals):
        values = lit.get("values") or {}
        assigns = []
        for i, p in enumerate(sig.params):
            if p.name in values:
                assigns.append(f"a{i} = {_literal(values[p.name], _storage(p), sig, g.ns)};")
        if assigns:
            g.emit(f"if (literal == {k}) {{ " + " ".join(assigns) + " }")


def _cached(g: _Gen, plan: DriverPlan, gen_body: str) -> None:
    """The inputs of the last (seed, P, literal) are kept and copied for each call: repeated
    runs of one test then cost a copy, not a regeneration."""
    sig = plan.signature
    types = ", ".join(_storage(p).spell(g.ns) for p in sig.params)
    moved = ", ".join(f"std::move(a{i})" for i in range(len(sig.params)))
    g.emit(f"static std::tuple<{types}> cache_; static uint64_t cache_key_ = 0; static bool cached_ = false;")
    g.emit("uint64_t key_ = seed * 1000003ull + (uint64_t)(literal + 7);")
    g.emit(f"for (int k_ = 0; k_ < {len(plan.slots)}; ++k_) {{ uint64_t b_; double d_ = P[k_]; memcpy(&b_, &d_, 8); key_ = (key_ ^ b_) * 1099511628211ull; }}")
    g.emit("if (!cached_ || key_ != cache_key_) {")
    g.lines.append(gen_body)
    g.emit(f"  cache_ = std::make_tuple({moved}); cache_key_ = key_; cached_ = true;")
    g.emit("}")
    g.emit(f"std::tuple<{types}> in_ = cache_;")
    for i in range(len(sig.params)):
        g.emit(f"auto& a{i} = std::get<{i}>(in_);")


def _call_and_outputs(sig: Signature, callee: str) -> tuple[str, str]:
    """The call of ``callee`` on the arguments, and the code that serializes what it returned and wrote."""
    args = ", ".join(f"a{i}.data()" if p.is_pointer else f"a{i}" for i, p in enumerate(sig.params))
    call = f"{callee}({args})"
    if sig.returns.kind != "void":
        call = f"auto ret_ = {call}"
    puts = []
    if sig.returns.kind != "void":
        puts.append("out->open('O', -1); bk_put(*out, ret_" + (", 0" if sig.returns.kind in ("vector", "array") else "") + ");")
    for i, p in enumerate(sig.params):
        if not p.is_output:
            continue
        if p.is_pointer:
            puts.append(f"out->open('O', {i}); bk_put_ptr(*out, a{i}.data(), a{i}.size());")
        elif p.type.kind in ("vector", "array"):
            puts.append(f"out->open('O', {i}); bk_put(*out, a{i}, 0);")
        else:
            puts.append(f"out->open('O', {i}); bk_put(*out, a{i});")
    return call, "\n      ".join(puts)


def run_function(plan: DriverPlan, side: str, callee: str, literals: Sequence[Mapping[str, Any]], sync: str = "") -> str:
    """The C++ definition of ``bk_<side>_run`` calling ``callee`` (e.g. ``::bk_cand::fn``);
    ``sync``: a statement run just before the clock starts and just before it stops (an MPI
    barrier, so the time is the slowest rank's)."""
    g = _Gen(plan, f"::bk_{side}")
    _generate_inputs(g, plan, literals)
    gen_body = "\n".join(g.lines)
    g.lines = []
    if plan.signature.params:
        _cached(g, plan, gen_body)
    call, put_code = _call_and_outputs(plan.signature, callee)
    body = "\n".join(g.lines)
    return f"""
int bk_{side}_run(uint64_t seed, const double* P, int literal, int threads, bk::Val* out, double* secs, std::string* err) {{
  using namespace bk;
  (void)P; (void)literal;
  Rng R(seed);
{body}
  omp_set_num_threads(threads);
  try {{
    {sync}
    double t0_ = omp_get_wtime();
    {call};
    {sync}
    *secs = omp_get_wtime() - t0_;
    if (out) {{
      {put_code}
    }}
  }} catch (std::exception& e) {{
    *err = e.what();
    return 1;
  }} catch (...) {{
    *err = "unknown exception";
    return 1;
  }}
  return 0;
}}
"""


_INCLUDE = re.compile(r"^[ \t]*#[ \t]*include[^\n]*$", re.M)


def split_includes(source: str) -> tuple[str, str]:
    """(the #include lines, the rest): includes must not land inside a namespace."""
    includes = "\n".join(m.group(0).strip() for m in _INCLUDE.finditer(source))
    return includes, _INCLUDE.sub("", source)


def cxx_side(plan: DriverPlan, side: str, source: str, support: str, literals: Sequence[Mapping[str, Any]],
             prelude: str = "", sync: str = "") -> str:
    """One C++ translation unit: the source in ``namespace bk_<side>`` plus its runner;
    ``prelude`` comes right after the includes (``Dialect``)."""
    includes, body = split_includes(source)
    return (
        f'#include "bk_rt.h"\n{includes}\n{prelude}\nnamespace bk_{side} {{\n#line 1 "{side}.cpp"\n{body}\n'
        f"{support}\n}}\nnamespace bk_{side} {{\n{_struct_serializers(plan.signature)}\n}}\n"
        + run_function(plan, side, f"::bk_{side}::{plan.signature.name}", literals, sync)
    )


C_PRELUDE = """#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>
#include <limits.h>
#include <float.h>
#include <omp.h>
"""


def c_side(source: str, support: str, side: str, prelude: str = "") -> str:
    """One C translation unit; its global symbols get the prefix ``bk_<side>_`` after compiling."""
    includes, body = split_includes(source)
    if not prelude:  # as written: the includes stay where the source has them
        includes, body = "", source
    return f'{C_PRELUDE}{includes}\n{prelude}\n#line 1 "{side}.c"\n{body}\n{support}\n'


def _c_param(p: Param, ns: str) -> str:
    base = p.type.spell(ns)
    if p.passing == "cpointer":
        return f"const {base}* {p.name}"
    if p.passing == "pointer":
        return f"{base}* {p.name}"
    return f"{base} {p.name}"


def c_runner(plan: DriverPlan, side: str, literals: Sequence[Mapping[str, Any]], prelude: str = "", sync: str = "") -> str:
    """The C++ runner for a C side: struct definitions, the renamed prototype, ``bk_<side>_run``."""
    sig = plan.signature
    ns = f"::bk_{side}"
    for p in sig.params:
        if p.type.kind in ("vector", "array", "string", "complex") or p.passing in ("ref", "cref"):
            raise SignatureError(f"{sig.name}() is C but parameter {p.name} has a C++ type")
    structs = "\n".join(s.text for s in sig.structs.values())
    proto = f'extern "C" {sig.returns.spell(ns)} bk_{side}_{sig.name}(' + ", ".join(_c_param(p, ns) for p in sig.params) + ");"
    return (
        f'#include "bk_rt.h"\n{prelude}\nnamespace bk_{side} {{\n{structs}\n{proto}\n{_struct_serializers(sig)}\n}}\n'
        + run_function(plan, side, f"::bk_{side}::bk_{side}_{sig.name}", literals, sync)
    )


