"""``bakeoff select``: vote among candidates a user brings, and pick the fastest correct one.

No model is needed: the reference's outputs on generated inputs (and any given tests) decide
correctness, and interleaved timing decides speed. Python candidates go through
``agent.harness.python_harness.PythonHarness``; C/C++ through ``agent.harness.c_harness.CHarness``
(``mpi_harness.MpiHarness`` when the code calls MPI), with an input spec inferred from the
reference and checked against it, or given with ``--spec``. Candidates are code someone else
wrote: they build and run only inside a sandbox (``--sandbox``).
Top-level imports: typer and the standard library only, so ``bakeoff --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer

C_SUFFIXES = {".c", ".cc", ".cpp", ".cxx"}


class UsageProblem(Exception):
    """Something the user can fix; the message says how."""


def register(app: typer.Typer) -> None:
    @app.command("select")
    def select_command(
        reference: Path = typer.Option(..., "--reference", help="The original code: its outputs are the expected ones."),
        candidate: list[Path] = typer.Option([], "--candidate", help="A candidate file (repeat the option for each)."),
        candidates_jsonl: Path | None = typer.Option(
            None, "--candidates-jsonl", help='JSON lines, each {"id": ..., "source": ...} or {"id": ..., "path": ...}.'
        ),
        tests: list[Path] = typer.Option([], "--tests", help="Extra test files of asserts calling the entry function."),
        entry: str | None = typer.Option(None, "--entry", help="The function to compare (default: the reference's only or last function)."),
        as_json: bool = typer.Option(False, "--json", help="Print the verdict as JSON instead of the table."),
        unordered: bool = typer.Option(False, "--unordered", help="Compare sequence results ignoring order."),
        repeats: int = typer.Option(3, "--repeats", min=1, help="Runs per candidate (a changing result is flaky)."),
        timing_repeats: int = typer.Option(5, "--timing-repeats", min=2, help="Interleaved timing pairs per winner."),
        sandbox: str = typer.Option(
            "auto", "--sandbox", help="Where candidates run: auto (Docker if an engine answers, else local), docker, local, local+bwrap."
        ),
        spec: Path | None = typer.Option(
            None, "--spec", help="C/C++: a JSON input spec (sizes, lengths, value domains) instead of one inferred from the reference."
        ),
    ) -> None:
        """Pick the fastest candidate that behaves like the reference. Exit 0 with a winner, 1 without."""
        from bakeoff.sandboxes import SandboxUnavailable

        try:
            verdict = asyncio.run(
                _select(reference, candidate, candidates_jsonl, tests, entry, unordered, repeats, timing_repeats, sandbox,
                        spec)
            )
        except (UsageProblem, SandboxUnavailable) as exc:
            typer.echo(f"bakeoff select: {exc}", err=True)
            raise typer.Exit(2) from None
        if as_json:
            typer.echo(verdict.model_dump_json(indent=2))
        else:
            from rich.console import Console

            from bakeoff.agent.selection.table import render_table

            Console().print(render_table(verdict))
        raise typer.Exit(0 if verdict.winner else 1)


def _read(path: Path, what: str) -> str:
    if not path.is_file():
        raise UsageProblem(f"{what} {path} does not exist or is not a file: check the path")
    return path.read_text(encoding="utf-8", errors="replace")


def _load_candidates(paths: list[Path], jsonl: Path | None) -> dict[str, str]:
    sources: dict[str, str] = {}
    for p in paths:
        name = p.stem if p.stem not in sources else str(p)
        sources[name] = _read(p, "candidate")
    if jsonl is not None:
        for n, line in enumerate(_read(jsonl, "candidates file").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageProblem(f"{jsonl}:{n} is not JSON ({exc.msg}): write one object per line") from None
            if not isinstance(row, dict) or not ("source" in row or "path" in row):
                raise UsageProblem(f'{jsonl}:{n}: each line needs "source" (code) or "path" (a file), and optionally "id"')
            source = row["source"] if "source" in row else _read(jsonl.parent / row["path"], "candidate")
            sources[str(row.get("id", f"line{n}"))] = source
    if not sources:
        raise UsageProblem("no candidates: pass --candidate FILE (repeatable) or --candidates-jsonl FILE")
    return sources


def _default_entry(source: str) -> str:
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise UsageProblem(f"the reference does not parse (line {exc.lineno}: {exc.msg}): fix it first") from None
    names = [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")]
    if not names:
        raise UsageProblem("the reference defines no function: pass --entry NAME")
    return names[-1]


async def _select(reference, candidate_paths, jsonl, test_paths, entry, unordered, repeats, timing_repeats,
                  sandbox_kind="auto", spec_path=None):
    import tempfile

    from bakeoff.agent.seams import Workspace
    from bakeoff.sandboxes import create_sandbox

    ref_source = _read(reference, "reference")
    sources = _load_candidates(candidate_paths, jsonl)
    # An empty workspace: the harness writes what it runs into it.
    with tempfile.TemporaryDirectory(prefix="bakeoff-select-") as tmp:
        sandbox = await create_sandbox(Workspace(path=Path(tmp)), kind=sandbox_kind)
        try:
            return await _select_in(sandbox, reference, ref_source, sources, test_paths, entry, unordered, repeats,
                                    timing_repeats, spec_path)
        finally:
            await sandbox.close()


async def _select_in(sandbox, reference, ref_source, sources, test_paths, entry, unordered, repeats, timing_repeats,
                     spec_path=None):
    from bakeoff.agent.selection.choose import select
    from bakeoff.agent.types import Candidate

    if reference.suffix in C_SUFFIXES:
        harness = await _c_harness(sandbox, reference, ref_source, sources, entry, unordered, repeats, spec_path)
        given = []
    else:
        from bakeoff.agent.harness.pyexec import SandboxRunner
        from bakeoff.agent.harness.python_harness import PythonHarness
        from bakeoff.agent.harness.testgen import parse_generated_tests

        entry = entry or _default_entry(ref_source)
        try:
            harness = PythonHarness(ref_source, entry, unordered=unordered, repeats=repeats, runner=SandboxRunner(sandbox))
        except ValueError as exc:
            raise UsageProblem(f"{exc}: pass --entry NAME") from None
        given = []
        for p in test_paths:
            for t in parse_generated_tests(_read(p, "test file"), entry):
                given.append(t.model_copy(update={"kind": "given", "id": f"given-{len(given)}"}))
    tests = await harness.make_tests()
    # Given tests count only when the reference passes them (step 2: validate against the reference).
    if given:
        ref_check = await harness.run_matrix({"reference": ref_source}, given)
        given = [t.model_copy(update={"valid": ref_check.cells["reference"].get(t.id) == "pass"}) for t in given]
    all_tests = tests + given
    matrix = await harness.run_matrix(sources, all_tests)
    candidates = [Candidate(id=c, source=s, error=_load_error(matrix, c)) for c, s in sources.items()]
    verdict = select(matrix, all_tests, candidates, reference=True)
    if verdict.correct:
        timings = await harness.time({c: sources[c] for c in verdict.correct}, repeats=timing_repeats)
        diff_sizes = {c: _diff_lines(ref_source, sources[c]) for c in verdict.correct}
        verdict = select(matrix, all_tests, candidates, reference=True, timings=timings, diff_sizes=diff_sizes)
    return verdict


async def _c_harness(sandbox, reference, ref_source, sources, entry, unordered, repeats, spec_path):
    """The C/C++ harness (the MPI one when the code calls MPI), driven by the given spec or by
    one inferred from the reference and checked against it."""
    from bakeoff.agent.harness.c_harness import CHarness
    from bakeoff.agent.harness.c_signature import SignatureError
    from bakeoff.agent.harness.c_spec_model import settle_spec
    from bakeoff.agent.harness.mpi_harness import MpiHarness, calls_mpi

    if not entry:
        raise UsageProblem("for C/C++ pass --entry NAME: the function whose results are compared")
    given = None
    if spec_path is not None:
        try:
            given = json.loads(_read(spec_path, "spec"))
        except json.JSONDecodeError as exc:
            raise UsageProblem(f"{spec_path} is not JSON ({exc.msg}): write the spec as one JSON object") from None
    language = "c" if reference.suffix == ".c" else "c++"
    kind = MpiHarness if any(calls_mpi(src) for src in [ref_source, *sources.values()]) else CHarness
    try:
        harness = kind(ref_source, entry, language=language, unordered=unordered, repeats=repeats, sandbox=sandbox,
                       constraints=given)
    except (SignatureError, ValueError) as exc:
        raise UsageProblem(f"{exc}: check --entry, or pass --spec FILE") from None
    if given is None:
        outcome = await settle_spec(harness)
        if not outcome.testable:
            await harness.close()
            raise UsageProblem(f"no input spec for {entry}() passed its check against the reference "
                               f"({'; '.join(outcome.problems)[:400]}): pass one with --spec FILE")
    return harness


def _load_error(matrix, cand: str) -> str | None:
    """Why a candidate failed on every test, when it failed the same way on all of them."""
    outs = set(matrix.outputs.get(cand, {}).values())
    cells = set(matrix.cells.get(cand, {}).values())
    if cells == {"error"} and len(outs) == 1:
        return outs.pop().lstrip("!")
    return None


def _diff_lines(a: str, b: str) -> int:
    import difflib

    return sum(1 for line in difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm="", n=0)
               if line.startswith(("+", "-")) and not line.startswith(("+++", "---")))
