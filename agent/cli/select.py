"""``bakeoff select``: vote among candidates a user brings, and pick the fastest correct one.

No model is needed: the reference's outputs on generated inputs (and any given tests) decide
correctness, and interleaved timing decides speed. Python candidates go through
``agent.harness.python_harness.PythonHarness``; C/C++ through ``agent.harness.c_harness.CHarness``
(``mpi_harness.MpiHarness`` when the code calls MPI), with an input spec inferred from the
reference and checked against it, or given with ``--spec``; CUDA (``.cu``) through
``cuda_harness.CudaHarness``, which without a visible CUDA device only builds the candidates
and calls none of them correct. Candidates are code someone else
wrote: they build and run only inside a sandbox (``--sandbox``).
Top-level imports: typer and the standard library only, so ``bakeoff --help`` stays fast.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import typer

C_SUFFIXES = {".c", ".cc", ".cpp", ".cxx", ".cu"}


class UsageProblem(Exception):
    """Something the user can fix; the message says how."""


@dataclass(frozen=True)
class SelectOptions:
    unordered: bool = False
    repeats: int = 3
    timing_repeats: int = 5
    threads: int | None = None  # the target parallelism; None: the CPUs the sandbox may use
    min_time_s: float = 0.2  # the timing input grows until the reference takes this long per call
    require_faster: bool = True  # a winner must be faster than the reference
    spec: Path | None = None  # C/C++: a JSON input spec instead of one inferred and checked
    gpus: bool | None = None  # the machine's NVIDIA GPUs in the sandbox; None: for a CUDA reference only


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
        threads: int | None = typer.Option(
            None, "--threads", min=1, help="Threads the candidates are timed at (default: the CPUs the sandbox may use)."
        ),
        min_time: float = typer.Option(
            0.2, "--min-time", min=0.0,
            help="Grow the timing input until the reference takes this many seconds per call at one thread (0: as drawn).",
        ),
        require_faster: bool = typer.Option(
            True, "--require-faster/--any-speed",
            help="Ship only a candidate faster than the reference (default), or any correct one.",
        ),
        spec: Path | None = typer.Option(None, "--spec", help="C/C++: a JSON input spec (sizes, lengths, value domains) instead of one inferred from the reference."),
        gpus: bool | None = typer.Option(None, "--gpus/--no-gpus", help="Hand this machine's NVIDIA GPUs to the sandbox (default: for a .cu reference only)."),
        docker_host: str | None = typer.Option(None, "--docker-host", help="The Docker engine sandboxes run on: tcp://HOST:PORT, ssh://USER@HOST, unix:///PATH or a docker context name (default: DOCKER_HOST, else this machine's)."),
        docker_cert_path: Path | None = typer.Option(None, "--docker-cert-path", metavar="DIR", help="Folder of ca.pem, cert.pem and key.pem: TLS to a tcp:// --docker-host."),
    ) -> None:
        """Pick the fastest candidate that behaves like the reference. Exit 0 with a winner; 1 without one, or when
        no correct candidate is faster than the reference (the best is named, not chosen); 2 for a usage error."""
        from bakeoff.agent.cli.stopping import Stopped, leave_now, run_stoppable
        from bakeoff.sandboxes import SandboxUnavailable
        from bakeoff.sandboxes.docker_engine import DockerImageError
        from bakeoff.sandboxes.docker_host import DockerHost

        engine = DockerHost(docker_host, str(docker_cert_path) if docker_cert_path else None)
        options = SelectOptions(unordered=unordered, repeats=repeats, timing_repeats=timing_repeats, threads=threads,
                                min_time_s=min_time, require_faster=require_faster, spec=spec, gpus=gpus)
        try:
            verdict = run_stoppable(_select(reference, candidate, candidates_jsonl, tests, entry, options, sandbox, engine))
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


async def _select(reference, candidate_paths, jsonl, test_paths, entry, options: SelectOptions, sandbox_kind="auto",
                  docker_host=None):
    import tempfile

    from bakeoff.agent.seams import SandboxLimits, Workspace
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
                return await _select_in(per_source, reference, ref_source, sources, test_paths, entry, options)
        gpus = options.gpus if options.gpus is not None else reference.suffix == ".cu"
        sandbox = await create_sandbox(Workspace(path=Path(tmp)), kind=sandbox_kind, docker_host=docker_host,
                                       limits=SandboxLimits(gpus=True) if gpus else None)
        try:
            return await _select_in(sandbox, reference, ref_source, sources, test_paths, entry, options)
        finally:
            await sandbox.close()


async def _harness(sandbox, reference: Path, ref_source: str, sources, entry: str | None, options: SelectOptions):
    """The differential harness for the reference's language, and the entry function it compares."""
    from bakeoff.agent.harness.sizing import SizingLimits

    if reference.suffix in C_SUFFIXES:
        return await _c_harness(sandbox, reference, ref_source, sources, entry, options), entry
    from bakeoff.agent.harness.pyexec import SandboxRunner
    from bakeoff.agent.harness.python_harness import PythonHarness

    entry = _default_entry(ref_source, entry)
    try:
        return PythonHarness(ref_source, entry, unordered=options.unordered, repeats=options.repeats,
                             runner=SandboxRunner(sandbox), sizing=SizingLimits(min_time_s=options.min_time_s)), entry
    except ValueError as exc:
        raise UsageProblem(f"{exc}: pass --entry NAME") from None


async def _select_in(sandbox, reference, ref_source, sources, test_paths, entry, options: SelectOptions):
    from bakeoff.agent.harness.parallelism import target_parallelism
    from bakeoff.agent.seams import Sandbox
    from bakeoff.agent.selection.choose import select
    from bakeoff.agent.types import Candidate

    harness, entry = await _harness(sandbox, reference, ref_source, sources, entry, options)
    given = []
    if reference.suffix not in C_SUFFIXES:
        from bakeoff.agent.harness.testgen import parse_generated_tests

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
    verdict = select(matrix, all_tests, candidates, reference=True, speed_task=options.require_faster)
    if await _build_only(harness):
        return _built_only(verdict, harness)
    if verdict.correct:
        # Python programs have a sandbox each: the reference's says what the candidates may use.
        probe = sandbox if isinstance(sandbox, Sandbox) else await sandbox(ref_source)
        target = await target_parallelism(options.threads, sandbox=probe, setting="--threads")
        timings = await harness.time({c: sources[c] for c in verdict.correct}, repeats=options.timing_repeats,
                                     target=target)
        diff_sizes = {c: _diff_lines(ref_source, sources[c]) for c in verdict.correct}
        verdict = select(matrix, all_tests, candidates, reference=True, timings=timings, diff_sizes=diff_sizes,
                         speed_task=options.require_faster, setup=harness.timing_setup)
    return verdict


async def _c_harness(sandbox, reference, ref_source, sources, entry, options: SelectOptions):
    """The C/C++ harness (the MPI one when the code calls MPI), driven by the given spec or by
    one inferred from the reference and checked against it."""
    from bakeoff.agent.harness.c_harness import CHarness
    from bakeoff.agent.harness.c_signature import SignatureError
    from bakeoff.agent.harness.c_spec_model import settle_spec
    from bakeoff.agent.harness.c_timing import TimingOptions
    from bakeoff.agent.harness.mpi_harness import MpiHarness, calls_mpi
    from bakeoff.agent.harness.sizing import SizingLimits

    if not entry:
        raise UsageProblem("for C/C++ pass --entry NAME: the function whose results are compared")
    given = None
    spec_path = options.spec
    if spec_path is not None:
        try:
            given = json.loads(_read(spec_path, "spec"))
        except json.JSONDecodeError as exc:
            raise UsageProblem(f"{spec_path} is not JSON ({exc.msg}): write the spec as one JSON object") from None
    language = "c" if reference.suffix == ".c" else "c++"
    kind = MpiHarness if any(calls_mpi(src) for src in [ref_source, *sources.values()]) else CHarness
    if reference.suffix == ".cu":
        from bakeoff.agent.harness.cuda_harness import CudaHarness

        kind = CudaHarness
    try:
        harness = kind(ref_source, entry, language=language, unordered=options.unordered, repeats=options.repeats,
                       sandbox=sandbox, constraints=given,
                       timing=TimingOptions(sizing=SizingLimits(min_time_s=options.min_time_s)))
    except (SignatureError, ValueError) as exc:
        raise UsageProblem(f"{exc}: check --entry, or pass --spec FILE") from None
    if given is None and not await _build_only(harness):
        outcome = await settle_spec(harness)
        if not outcome.testable:
            await harness.close()
            raise UsageProblem(f"no input spec for {entry}() passed its check against the reference "
                               f"({'; '.join(outcome.problems)[:400]}): pass one with --spec FILE")
    return harness


async def _build_only(harness) -> bool:
    """True for a CUDA harness that sees no CUDA device: its candidates are only built."""
    build_only = getattr(harness, "build_only", None)
    return build_only is not None and await build_only()


def _built_only(verdict, harness):
    """The verdict of candidates that were built and never run: none is correct or faster,
    and the reason and each row say so."""
    from bakeoff.agent.harness.cuda_harness import NO_DEVICE

    built = [r.candidate for r in verdict.rows if r.built is not False]
    why = next((n for n in harness.notes if n.startswith(NO_DEVICE)), NO_DEVICE)
    reason = (f"no winner: {why}; {len(built)} of {len(verdict.rows)} candidates built, and none is called "
              "correct or faster: nothing ran.")
    rows = [r.model_copy(update={"correct": None, "note": "built; not run (no CUDA device)"}) if r.built is not False
            else r for r in verdict.rows]
    return verdict.model_copy(update={"winner": None, "correct": [], "method": "none", "reason": reason, "rows": rows,
                                      "not_faster": False, "best": None})


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
