"""``bakeoff select``: vote among candidates a user brings, and pick the fastest correct one.

No model is needed: the reference's outputs on generated inputs (and any given tests) decide
correctness, and interleaved timing decides speed. Python candidates go through
``agent.testgen.PythonHarness``; C/C++ through ``agent.differential_c.CHarness``. Candidates
are code someone else wrote: they build and run only inside a sandbox (``--sandbox``).
Top-level imports: typer and the standard library only, so ``bakeoff --help`` stays fast.
"""

from __future__ import annotations

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
            "auto", "--sandbox", help="Where candidates run: auto (Docker if an engine answers, else bubblewrap), docker, local (bubblewrap), unsafe-local (no isolation: trusted code only)."
        ),
        docker_host: str | None = typer.Option(None, "--docker-host", help="The Docker engine sandboxes run on: tcp://HOST:PORT, ssh://USER@HOST, unix:///PATH or a docker context name (default: DOCKER_HOST, else this machine's)."),
        docker_cert_path: Path | None = typer.Option(None, "--docker-cert-path", metavar="DIR", help="Folder of ca.pem, cert.pem and key.pem: TLS to a tcp:// --docker-host."),
    ) -> None:
        """Pick the fastest candidate that behaves like the reference. Exit 0 with a winner, 1 without."""
        from bakeoff.agent.cli.stopping import Stopped, leave_now, run_stoppable
        from bakeoff.sandboxes import SandboxUnavailable
        from bakeoff.sandboxes.docker_engine import DockerImageError
        from bakeoff.sandboxes.docker_host import DockerHost

        engine = DockerHost(docker_host, str(docker_cert_path) if docker_cert_path else None)
        try:
            verdict = run_stoppable(
                _select(reference, candidate, candidates_jsonl, tests, entry, unordered, repeats, timing_repeats, sandbox,
                        engine)
            )
        except (UsageProblem, SandboxUnavailable, DockerImageError) as exc:
            typer.echo(f"bakeoff select: {exc}", err=True)
            raise typer.Exit(2) from None
        except Stopped as stop:
            leave_now(stop, f"stopped by {stop.name}: the candidates' sandbox removed")
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
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageProblem(f"{what} {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}): "
                           "save it as UTF-8") from None


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


def _default_entry(source: str, entry: str | None = None) -> str:
    """``entry``, else the reference's last public function; the reference must parse either way."""
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise UsageProblem(f"the reference does not parse (line {exc.lineno}: {exc.msg}): fix it first") from None
    if entry:
        return entry
    names = [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")]
    if not names:
        raise UsageProblem("the reference defines no function: pass --entry NAME")
    return names[-1]


async def _select(reference, candidate_paths, jsonl, test_paths, entry, unordered, repeats, timing_repeats,
                  sandbox_kind="auto", docker_host=None):
    import tempfile

    from bakeoff.agent.seams import Workspace
    from bakeoff.sandboxes import choose_backend, create_sandbox
    from bakeoff.sandboxes.pool import SandboxPerKey

    choose_backend(sandbox_kind, docker_host)  # a sandbox that cannot run here is the user's to fix, before any work
    ref_source = _read(reference, "reference")
    sources = _load_candidates(candidate_paths, jsonl)
    # An empty workspace: the harness writes what it runs into it. Python programs get a
    # sandbox each (one candidate's fork bomb cannot starve another's runs); C/C++ share one.
    with tempfile.TemporaryDirectory(prefix="bakeoff-select-") as tmp:
        if reference.suffix not in C_SUFFIXES:
            async with SandboxPerKey(Workspace(path=Path(tmp)), sandbox_kind, docker_host=docker_host) as per_source:
                return await _select_in(per_source, reference, ref_source, sources, test_paths, entry, unordered,
                                        repeats, timing_repeats)
        sandbox = await create_sandbox(Workspace(path=Path(tmp)), kind=sandbox_kind, docker_host=docker_host)
        try:
            return await _select_in(sandbox, reference, ref_source, sources, test_paths, entry, unordered, repeats,
                                    timing_repeats)
        finally:
            await sandbox.close()


async def _select_in(sandbox, reference, ref_source, sources, test_paths, entry, unordered, repeats, timing_repeats):
    from bakeoff.agent.selection.choose import select
    from bakeoff.agent.types import Candidate

    if reference.suffix in C_SUFFIXES:
        try:
            from bakeoff.agent.harness.c_harness import CHarness
        except ImportError as exc:
            raise UsageProblem(f"C/C++ candidates need agent.differential_c, which this installation lacks ({exc})") from None
        if not entry:
            raise UsageProblem("for C/C++ pass --entry NAME: the function whose results are compared")
        language = "c" if reference.suffix == ".c" else "c++"
        harness = CHarness(ref_source, entry, language=language, unordered=unordered, repeats=repeats, sandbox=sandbox)
        given = []
    else:
        from bakeoff.agent.harness.pyexec import SandboxRunner
        from bakeoff.agent.harness.python_harness import PythonHarness
        from bakeoff.agent.harness.testgen import parse_generated_tests

        entry = _default_entry(ref_source, entry)
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
    build_logs = getattr(harness, "build_logs", {})  # C/C++: why a candidate did not build
    candidates = [
        Candidate(id=c, source=s, built=False, error=_compiler_message(build_logs[c])) if c in build_logs
        else Candidate(id=c, source=s, error=_load_error(matrix, c))
        for c, s in sources.items()
    ]
    verdict = select(matrix, all_tests, candidates, reference=True)
    if verdict.correct:
        timings = await harness.time({c: sources[c] for c in verdict.correct}, repeats=timing_repeats)
        diff_sizes = {c: _diff_lines(ref_source, sources[c]) for c in verdict.correct}
        verdict = select(matrix, all_tests, candidates, reference=True, timings=timings, diff_sizes=diff_sizes)
    return verdict


def _compiler_message(log: str) -> str:
    """The compiler's first error, without the driver's file names (they mean nothing to the
    user): "does not build: 'x' undeclared (first use in this function)"."""
    import re

    for line in log.splitlines():
        found = re.search(r"\b(?:fatal )?error:\s*(.+)", line)
        if found:
            return f"does not build: {found.group(1).strip()}"
    last = next((line.strip() for line in reversed(log.splitlines()) if line.strip()), "")
    return f"does not build: {last or 'the compiler gave no message'}"


def _load_error(matrix, cand: str) -> str | None:
    """Why a candidate failed on every test, when it failed the same way on all of them
    (a limit it ran into: ``killed: more than 512 processes``)."""
    outs = set(matrix.outputs.get(cand, {}).values())
    cells = set(matrix.cells.get(cand, {}).values())
    if cells in ({"error"}, {"timeout"}) and len(outs) == 1:
        return outs.pop().lstrip("!")
    return None


def _diff_lines(a: str, b: str) -> int:
    import difflib

    return sum(1 for line in difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm="", n=0)
               if line.startswith(("+", "-")) and not line.startswith(("+++", "---")))
