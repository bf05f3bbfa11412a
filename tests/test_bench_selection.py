"""The selection benchmarks run on another copy of their data format (``--data DIR``) and
write the figures the issue names: small real slices of ../shared/bench, end to end."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.shared_data import bench_data

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


def _slice(src: Path, dst: Path, files: dict[str, callable]) -> None:
    dst.mkdir(parents=True)
    for name, keep in files.items():
        rows = [json.loads(line) for line in (src / name).read_text().splitlines() if line.strip()]
        (dst / name).write_text("".join(json.dumps(r) + "\n" for r in rows if keep(r)))


def test_select_codet_on_a_slice(tmp_path):
    import select_codet

    # HumanEval/30 has no generated assert that parses: its probes come from the signature.
    tasks = {"HumanEval/0", "HumanEval/2", "HumanEval/30"}
    data = tmp_path / "data"
    in_task = lambda r: r["task_id"] in tasks  # noqa: E731
    few = lambda r: r["task_id"] in tasks and r["index"] < 12  # noqa: E731
    _slice(bench_data("humaneval-codet-dev"), data, {"problems.jsonl": in_task, "generated_tests.jsonl": in_task,
                                                  "candidates.jsonl": few, "labels.jsonl": few})
    out = tmp_path / "codet.json"
    assert select_codet.main(["--data", str(data), "--json", str(out), "--cache", str(tmp_path / "cache"), "--workers", "2"]) == 0
    fig = json.loads(out.read_text())
    for key in ("selected_pass1", "random_pass1", "oracle", "codet_rule", "gap_closed"):
        assert key in fig
    labels = [json.loads(x) for x in (data / "labels.jsonl").read_text().splitlines()]
    by_task: dict[str, list[bool]] = {}
    for r in labels:
        by_task.setdefault(r["task_id"], []).append(r["passed"])
    assert fig["problems"] == 3
    assert fig["random_pass1"] == pytest.approx(sum(sum(v) / len(v) for v in by_task.values()) / 3)
    assert fig["oracle"] == pytest.approx(sum(any(v) for v in by_task.values()) / 3)
    assert 0 <= fig["selected_pass1"] <= fig["oracle"]
    row = {r["task_id"]: r for r in fig["per_problem"]}
    assert row["HumanEval/30"]["winners"] > 0  # the majority on signature probes picked someone
    assert len(list((tmp_path / "cache").glob("*.json"))) == 3


@pytest.mark.slow
def test_select_pareval_on_a_slice(tmp_path):
    import select_pareval

    data = tmp_path / "data"
    name, model = "55_transform_relu", "codellama-7b-hf"
    source = bench_data("pareval-omp-dev")
    _slice(source, data, {
        "problems.jsonl": lambda r: r["name"] == name,
        "candidates.jsonl": lambda r: r["name"] == name and r["model"] == model and r["index"] < 6,
    })
    shutil.copy(source / "score.py", data / "score.py")
    out = tmp_path / "pareval.json"
    assert select_pareval.main(["--data", str(data), "--problems", "all", "--json", str(out), "--repeats", "3",
                                "--picks", str(tmp_path / "picks.jsonl")]) == 0
    fig = json.loads(out.read_text())
    for key in ("selected_accuracy", "random_accuracy", "oracle", "gap_closed", "speedup_pick",
                "speedup_mean_correct", "speedup_oracle", "disagree_with_labels"):
        assert key in fig and key in fig["models"][model]
    rows = [json.loads(x) for x in (data / "candidates.jsonl").read_text().splitlines()]
    labels = {r["index"]: r["labels"]["are_all_valid"] for r in rows}
    pick = json.loads((tmp_path / "picks.jsonl").read_text().splitlines()[0])
    assert pick["name"] == name and pick["model"] == model
    # relu is easy to get right: some sample is, and the pick is one of those.
    assert any(labels.values()) and labels[pick["chosen_index"]]
    assert fig["selected_accuracy"] == 1.0
    assert fig["random_accuracy"] == pytest.approx(sum(labels.values()) / len(labels))
