"""Strategy hints that make a fan-out's candidates differ on purpose.

N samples of one prompt at one temperature tend to be N copies of the same idea. Each
trajectory of a fan-out gets its own hint, chosen for the language of the files it edits,
so that the candidates explore different ways to make the code parallel or faster.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath

from pydantic import BaseModel


class Strategy(BaseModel):
    """A named hint; the name appears in the prompt so a run's log says who tried what."""

    name: str
    hint: str


_C = [
    Strategy(
        name="omp-reduction",
        hint="Parallelize the hot loop with `#pragma omp parallel for` and give every accumulator the "
        "right `reduction` clause (+, *, min, max); variables written inside the loop must be private.",
    ),
    Strategy(
        name="omp-schedule",
        hint="Parallelize with OpenMP and pick the schedule for the shape of the work: "
        "`schedule(dynamic, chunk)` or `guided` when iterations cost different amounts, `static` when "
        "they cost the same.",
    ),
    Strategy(
        name="omp-manual-split",
        hint="Split the iteration range by hand: inside `#pragma omp parallel`, give each thread one "
        "contiguous block (omp_get_thread_num, omp_get_num_threads) and combine per-thread partial "
        "results at the end.",
    ),
    Strategy(
        name="omp-simd",
        hint="Vectorize: use `#pragma omp simd` (or `parallel for simd`) on the inner loop, with a "
        "reduction clause where values are accumulated, and keep the loop body branch-light.",
    ),
    Strategy(
        name="omp-tasks",
        hint="Use OpenMP tasks: `#pragma omp taskloop` with a grainsize (and `reduction` where values are "
        "accumulated) inside a single `parallel` region, for work that is irregular or recursive.",
    ),
    Strategy(
        name="cache-blocking",
        hint="Make memory access cache friendly first (loop blocking/tiling, contiguous access, hoisting "
        "invariants), then parallelize the outer blocked loop.",
    ),
]

_MPI = [
    Strategy(
        name="mpi-block",
        hint="Decompose the data into one contiguous block per MPI rank (handle the remainder when the "
        "size does not divide evenly) and combine with MPI_Reduce or MPI_Allreduce.",
    ),
    Strategy(
        name="mpi-cyclic",
        hint="Distribute iterations cyclically across MPI ranks (i = rank; i < n; i += size) to balance "
        "irregular work, then combine with MPI_Allreduce.",
    ),
    Strategy(
        name="mpi-hybrid",
        hint="Combine MPI across ranks with an OpenMP `parallel for` (with the right reduction) inside "
        "each rank.",
    ),
]

_PYTHON = [
    Strategy(
        name="py-algorithm",
        hint="Find a better algorithm (sorting, hashing, two pointers, prefix sums, early exit) that gives "
        "exactly the same answers on every input, including ties and edge cases.",
    ),
    Strategy(
        name="py-multiprocessing",
        hint="Split independent work across processes (multiprocessing or concurrent.futures) in "
        "chunks large enough to pay for starting them.",
    ),
    Strategy(
        name="py-idioms",
        hint="Move the inner loop into C-implemented built-ins (itertools, sum over a generator, map, "
        "sorted, bisect) and bind names used in the loop to locals.",
    ),
    Strategy(
        name="py-caching",
        hint="Remove repeated work: hoist invariants out of loops, cache or memoize results that are "
        "computed more than once.",
    ),
    # Last: it adds a dependency the repository may not have.
    Strategy(
        name="py-numpy",
        hint="Vectorize with numpy: replace Python loops by array operations; keep the return type and "
        "exact values the same.",
    ),
]

_GENERIC = [
    Strategy(name="minimal", hint="Make the smallest change that achieves the goal."),
    Strategy(name="algorithm", hint="Look for a better algorithm or data structure before tuning details."),
    Strategy(name="hot-loop", hint="Find the hottest loop and make it cheaper: hoist invariants, avoid repeated work."),
]

_SUFFIXES = {
    ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp",
    ".cu": "cuda", ".cuh": "cuda", ".py": "python",
}


def language_of(paths: Sequence[str]) -> str:
    """"c", "cpp", "cuda", "python", or "other": the language most of ``paths`` are written in."""
    counts: dict[str, int] = {}
    for path in paths:
        lang = _SUFFIXES.get(PurePosixPath(path).suffix.lower())
        if lang is not None:
            counts[lang] = counts.get(lang, 0) + 1
    if not counts:
        return "other"
    return max(sorted(counts), key=lambda lang: counts[lang])


def strategies_for(language: str, goal: str = "", extra: Sequence[Strategy] = ()) -> list[Strategy]:
    """The hints for ``language``, most generally useful first; MPI hints first when the goal asks for MPI."""
    if language in ("c", "cpp", "cuda"):
        base = _MPI + _C if "mpi" in goal.lower() else _C
    elif language == "python":
        base = _PYTHON
    else:
        base = _GENERIC
    return [*extra, *base]


def spread(strategies: Sequence[Strategy], n: int) -> list[Strategy]:
    """``n`` hints, cycling through ``strategies`` so each is used before any is repeated."""
    if not strategies:
        raise ValueError("no strategies to spread")
    return [strategies[i % len(strategies)] for i in range(n)]


def temperatures(n: int, low: float = 0.2, high: float = 1.0) -> list[float]:
    """``n`` temperatures spread evenly over [low, high]: the first candidate is the most careful."""
    if n <= 1:
        return [low]
    step = (high - low) / (n - 1)
    return [round(low + i * step, 3) for i in range(n)]
