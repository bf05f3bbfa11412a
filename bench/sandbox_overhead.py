"""Sandbox overhead: what a sandbox costs on top of running the same work bare.

For each backend (local, docker), on a git repository of 1,000 small files at its HEAD:

  create    median time to create a sandbox holding a copy of the repo (then closed; for
            docker, back to back with the warm pool as it is, and cold with no pool)
  exec      median time of ``true`` in a sandbox, against ``true`` run by a plain
            subprocess (the floor); for docker also a bare ``docker exec`` of ``true``
            (the engine's own cost, which no wrapper can go below)
  16 cand.  wall time for 16 candidates, each in its own sandbox from SandboxPool, compiling
            and running a small OpenMP program, against the same 16 compile-and-runs done by
            plain subprocesses in one tmp dir with the same concurrency (the floor)

Targets (BENCHMARKS/issue 2): local exec under 2x the floor; docker warm-pool exec under
100 ms median; 16-candidate throughput within 1.5x of the floor on 2 cores.

    python3 bench/sandbox_overhead.py [--backends local,docker] [--repeat N] [--rounds R]
                                      [--concurrency C ...] [--json PATH]

The JSON has ``local_exec_ratio`` (local exec / bare subprocess), ``docker_exec_ms`` (median
warm exec, null without an engine), ``throughput_ratio_16`` (16-candidate wall / floor, for
the backend ``auto`` picks here) and every figure behind them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bakeoff.agent.seams import Workspace  # noqa: E402
from bakeoff.sandboxes import choose_backend, create_sandbox  # noqa: E402
from bakeoff.sandboxes.pool import SandboxPool  # noqa: E402

FILES = 1000
CANDIDATES = 16

OMP_SOURCE = r"""
#include <omp.h>
#include <stdio.h>
int main(void) {
    double total = 0.0;
    #pragma omp parallel for reduction(+:total)
    for (long i = 1; i <= 20000000; i++) total += 1.0 / (double)i;
    printf("%.6f %d\n", total, omp_get_max_threads());
    return 0;
}
"""
BUILD_AND_RUN = "gcc -O2 -fopenmp omp.c -o omp && ./omp"


def make_repo(root: Path) -> Path:
    """A git repository of 1,000 small source-like files (40 directories of 25) and omp.c."""
    repo = root / "repo"
    for i in range(FILES - 1):
        d = repo / f"pkg{i % 40:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"mod{i:04d}.c").write_text(f"/* file {i} */\nint f{i}(int x) {{ return x * {i} + 1; }}\n" * 4)
    (repo / "omp.c").write_text(OMP_SOURCE)
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@b", "GIT_CONFIG_GLOBAL": os.devnull}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "base"]):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True)
    return repo


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 1)


async def floor_exec(repeat: int, cwd: Path) -> list[float]:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        proc = await asyncio.create_subprocess_exec("sh", "-c", "true", cwd=cwd)
        await proc.wait()
        times.append(time.perf_counter() - t)
    return times


async def floor_throughput(concurrency: int, repo: Path) -> float:
    work = Path(tempfile.mkdtemp(prefix="bakeoff-bench-floor-"))
    (work / "omp.c").write_text((repo / "omp.c").read_text())
    slots = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with slots:
            cmd = f"gcc -O2 -fopenmp omp.c -o omp{i} && ./omp{i}"
            proc = await asyncio.create_subprocess_exec("sh", "-c", cmd, cwd=work,
                                                        stdout=asyncio.subprocess.PIPE)
            out, _ = await proc.communicate()
            assert proc.returncode == 0, out

    t = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(CANDIDATES)))
    wall = time.perf_counter() - t
    subprocess.run(["rm", "-rf", str(work)], check=True)
    return wall


async def sandbox_throughput(kind: str, concurrency: int, ws: Workspace) -> float:
    async def candidate(_: int, sb) -> None:
        r = await sb.exec(BUILD_AND_RUN, timeout=120)
        assert r.ok, r.summary()

    async with SandboxPool(kind, max_concurrent=concurrency) as pool:
        t = time.perf_counter()
        results = await pool.map(candidate, range(CANDIDATES), workspace=ws)
        wall = time.perf_counter() - t
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        raise RuntimeError(f"{len(failures)} candidates failed on {kind}: {failures[0]!r}")
    return wall


async def bench_backend(kind: str, ws: Workspace, repeat: int) -> dict:
    out: dict = {"kind": kind}
    # Create: back to back, closing each (docker: with the warm pool as it stands).
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        sb = await create_sandbox(ws, kind)
        times.append(time.perf_counter() - t)
        out["backend"] = sb.backend
        await sb.close()
    out["create_ms"] = median_ms(times)
    if kind == "docker":
        from bakeoff.sandboxes.docker import DockerBackend

        times = []
        for _ in range(max(3, repeat // 2)):
            cold = DockerBackend()  # a backend of its own: no spare is ready for its first create
            await asyncio.to_thread(cold.ensure_image)
            t = time.perf_counter()
            sb = await cold.create(ws)
            times.append(time.perf_counter() - t)
            await sb.close()
            await cold.close()
        out["create_cold_ms"] = median_ms(times)
    # Exec of `true` in one sandbox.
    sb = await create_sandbox(ws, kind)
    try:
        await sb.exec("true")  # the first call may pay one-time costs
        times = []
        for _ in range(repeat * 3):
            t = time.perf_counter()
            r = await sb.exec("true")
            times.append(time.perf_counter() - t)
            assert r.ok, r.summary()
        out["exec_ms"] = median_ms(times)
        if kind == "docker":
            # The engine's own floor for comparison: a bare `docker exec` of `true` (create,
            # start, inspect), no timeout wrapper, no output capture.
            api, cid = sb._owner.api, sb.container_id

            def bare_exec() -> None:
                exec_id = api.exec_create(cid, ["true"])["Id"]
                api.exec_start(exec_id)
                api.exec_inspect(exec_id)

            times = []
            for _ in range(repeat * 3):
                t = time.perf_counter()
                await asyncio.to_thread(bare_exec)
                times.append(time.perf_counter() - t)
            out["bare_docker_exec_ms"] = median_ms(times)
    finally:
        await sb.close()
    return out


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="local,docker")
    ap.add_argument("--repeat", type=int, default=10, help="samples per median (exec uses 3x)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[2, 4],
                    help="SandboxPool max_concurrent values to try for the 16 candidates")
    ap.add_argument("--rounds", type=int, default=1,
                    help="interleaved rounds of the 16-candidate runs (floor, local, docker, ...)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bakeoff-bench-sandbox-"))
    repo = make_repo(root)
    ws = Workspace(path=repo, commit="HEAD")
    floor: dict = {"exec_ms": median_ms(await floor_exec(args.repeat * 3, root))}
    results: dict[str, dict | None] = {}
    notes = []
    for kind in args.backends.split(","):
        if kind == "docker":
            from bakeoff.sandboxes.docker import engine_available

            ok, why = engine_available()
            if not ok:
                results[kind] = None
                notes.append(f"docker skipped: {why}")
                continue
        results[kind] = await bench_backend(kind, ws, args.repeat)
    # Throughput: rounds interleave the floor and every backend (A B C A B C ...), so a burst
    # of load from elsewhere on the machine hits all of them alike; medians over the rounds.
    walls: dict[str, dict[int, list[float]]] = {k: {c: [] for c in args.concurrency}
                                                for k in ["floor", *(k for k, r in results.items() if r)]}
    for _ in range(args.rounds):
        for c in args.concurrency:
            walls["floor"][c].append(await floor_throughput(c, repo))
            for kind, r in results.items():
                if r is not None:
                    walls[kind][c].append(await sandbox_throughput(kind, c, ws))
    floor["throughput_s"] = {c: round(statistics.median(walls["floor"][c]), 2) for c in args.concurrency}
    for kind, r in results.items():
        if r is not None:
            r["throughput_s"] = {c: round(statistics.median(walls[kind][c]), 2) for c in args.concurrency}
            r["throughput_ratio_rounds"] = {
                c: [round(b / f, 3) for b, f in zip(walls[kind][c], walls["floor"][c])] for c in args.concurrency}
    if "docker" in results and results["docker"] is not None:
        from bakeoff.sandboxes.docker import DockerBackend

        await DockerBackend.shared().close()
    subprocess.run(["rm", "-rf", str(root)], check=False)

    best_c = {k: min(args.concurrency, key=lambda c, k=k: r["throughput_s"][c] / floor["throughput_s"][c])
              for k, r in results.items() if r}
    rows = [("backend", "create ms", "exec `true` ms", "exec / floor",
             *(f"16 cand. s (C={c})" for c in args.concurrency), "16 cand. / floor (best C)")]
    rows.append(("floor (plain subprocess)", "-", f"{floor['exec_ms']}", "1.00",
                 *(f"{floor['throughput_s'][c]}" for c in args.concurrency), "1.00"))
    for kind, r in results.items():
        if r is None:
            rows.append((kind, "n/a", "n/a", "n/a", *("n/a" for _ in args.concurrency), "n/a"))
            continue
        c = best_c[kind]
        create = f"{r['create_ms']}" + (f" (cold {r['create_cold_ms']})" if "create_cold_ms" in r else "")
        exec_ms = f"{r['exec_ms']}" + (f" (bare docker exec {r['bare_docker_exec_ms']})"
                                       if "bare_docker_exec_ms" in r else "")
        rows.append((r["backend"], create, exec_ms, f"{r['exec_ms'] / floor['exec_ms']:.2f}",
                     *(f"{r['throughput_s'][cc]}" for cc in args.concurrency),
                     f"{r['throughput_s'][c] / floor['throughput_s'][c]:.2f} (C={c})"))
    load = os.getloadavg()[0]
    print(f"Sandbox overhead: {FILES}-file git repo at HEAD, {CANDIDATES} candidates of "
          f"`{BUILD_AND_RUN}`, {os.cpu_count()} cores, load average {load:.1f}, "
          f"{args.rounds} interleaved round(s)")
    print(table(rows))
    for note in notes:
        print(note)

    auto = choose_backend("auto").backend
    auto_kind = "docker" if auto == "docker" else "local"
    local, docker = results.get("local"), results.get("docker")

    def ratio(r: dict | None) -> float | None:
        if not r:
            return None
        c = best_c[r["kind"]]
        return round(r["throughput_s"][c] / floor["throughput_s"][c], 3)

    figures = {
        "local_exec_ratio": round(local["exec_ms"] / floor["exec_ms"], 3) if local else None,
        "docker_exec_ms": docker["exec_ms"] if docker else None,
        "throughput_ratio_16": ratio(results.get(auto_kind)),
        "throughput_ratio_16_backend": auto_kind,
        "throughput_ratio_16_local": ratio(local),
        "throughput_ratio_16_docker": ratio(docker),
        "floor": floor,
        "backends": results,
        "files": FILES,
        "candidates": CANDIDATES,
        "cores": os.cpu_count(),
        "load_average_1m": round(load, 2),
        "rounds": args.rounds,
        "notes": notes,
    }
    print(f"targets: local exec/floor {figures['local_exec_ratio']} (< 2); docker exec "
          f"{figures['docker_exec_ms']} ms (< 100); 16 candidates/floor {figures['throughput_ratio_16']} "
          f"on {auto_kind} (< 1.5)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(figures, indent=2, default=str) + "\n")
        tmp.replace(args.json)


if __name__ == "__main__":
    asyncio.run(main())
