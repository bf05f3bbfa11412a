"""The selection benchmarks run on another copy of their data format (``--data DIR``) and
write the figures the issue names: small real slices of ../shared/bench, end to end."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from bakeoff.agent.selection.agreement import CODET_RULE, FAMILY, RULE, AgreementRule
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
    assert select_codet.main(["--data", str(data), "--json", str(out), "--cache", str(tmp_path / "cache"), "--workers", "2",
                              "--cv"]) == 0
    fig = json.loads(out.read_text())
    for key in ("selected_pass1", "random_pass1", "oracle", "codet_rule", "gap_closed"):
        assert key in fig
    # Each problem with a gap is a fold of its own here; each is scored with a rule picked on the others.
    assert len(fig["cv_folds"]) == 3 and {f["problems"] for f in fig["cv_folds"]} == {1}
    held = [f["gap_closed"] for f in fig["cv_folds"]]
    assert fig["cv_gap_closed_mean"] == pytest.approx(sum(held) / 3) and fig["cv_gap_closed_min"] == min(held)
    assert fig["rule"] == fig["product_rule"] == RULE.name and len(fig["cv_family"]) == len(FAMILY)
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


def test_folds_are_even_reproducible_and_cover_every_problem():
    import select_codet

    ids = [f"HumanEval/{2 * i}" for i in range(82)]
    folds = select_codet.folds_of(ids)
    assert sorted(len(f) for f in folds) == [16, 16, 16, 17, 17]
    assert sorted(i for f in folds for i in f) == list(range(82))
    assert folds == select_codet.folds_of(list(ids))
    # The order in the file does not decide the folds: the ids do.
    shuffled = ids[::-1]
    assert sorted(sorted(shuffled[i] for i in f) for f in select_codet.folds_of(shuffled)) == sorted(
        sorted(ids[i] for i in f) for f in folds)


SIMPLE, FANCY = CODET_RULE, AgreementRule(grouping="outputs", test_power=0.5, tie_break=True)
PICK_CASES = [
    # (name, per-fold gap closed of each rule, expected pick)
    ("better on every fold wins", {SIMPLE: [0.2, 0.3, 0.25, 0.3], FANCY: [0.4, 0.5, 0.45, 0.5]}, FANCY),
    ("within the folds' noise the simpler wins", {SIMPLE: [0.2, 0.5, 0.3, 0.4], FANCY: [0.5, 0.3, 0.35, 0.45]}, SIMPLE),
    ("equal: the simpler", {FANCY: [0.3, 0.3, 0.3], SIMPLE: [0.3, 0.3, 0.3]}, SIMPLE),
]


@pytest.mark.parametrize("name,per_fold,expected", PICK_CASES, ids=[c[0] for c in PICK_CASES])
def test_pick_rule(name, per_fold, expected):
    import select_codet

    assert select_codet.pick_rule(per_fold) == expected


def test_cross_validation_scores_each_fold_with_a_rule_picked_on_the_others():
    import select_codet

    ids = [f"T/{i}" for i in range(10)]
    rows = [{"task_id": t, "random": 0.2, "oracle": 1.0, "codet": 0.2 + 0.4 * (i % 2)} for i, t in enumerate(ids)]
    folds = select_codet.folds_of(ids)
    # FANCY is right on every problem but those of the first fold; SIMPLE is right half the time.
    first = set(folds[0])
    by_rule = {SIMPLE: [0.5] * 10, FANCY: [0.2 if i in first else 1.0 for i in range(10)]}
    cv = select_codet.cross_validate(rows, by_rule, ids)
    assert [f["rule"] for f in cv["cv_folds"]] == [FANCY.name] * 5
    # Picked on the other folds, FANCY fails the first fold: the held-out figure says so.
    assert [f["gap_closed"] for f in cv["cv_folds"]] == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert cv["cv_gap_closed_mean"] == pytest.approx(0.8) and cv["cv_gap_closed_min"] == 0.0
    assert cv["cv_codet_gap_closed_mean"] == pytest.approx(0.25) and not cv["cv_above_codet_every_fold"]
    assert cv["cv_rule"] == FANCY.name
    few = select_codet.cross_validate(rows[:1], {SIMPLE: [1.0]}, ids[:1])
    assert few["cv_folds"] == [] and few["cv_gap_closed_mean"] is None


@pytest.mark.slow
def test_select_pareval_on_a_slice(tmp_path):
    import select_pareval

    data = tmp_path / "data"
    name, model = "55_transform_relu", "codellama-7b-hf"
    untestable = "05_fft_inverse_fft"  # its reference calls fft(), which only a person or a model can supply
    source = bench_data("pareval-omp-dev")
    _slice(source, data, {
        "problems.jsonl": lambda r: r["name"] in (name, untestable),
        "candidates.jsonl": lambda r: r["name"] in (name, untestable) and r["model"] == model and r["index"] < 6,
    })
    shutil.copy(source / "score.py", data / "score.py")
    out = tmp_path / "pareval.json"
    # Small timing inputs and one medium test: the figures' keys and the picks are what is checked here.
    quick = ["--repeats", "3", "--min-time", "0.02", "--medium-tests", "1"]
    assert select_pareval.main(["--data", str(data), "--problems", "all", "--json", str(out), *quick,
                                "--picks", str(tmp_path / "picks.jsonl")]) == 0
    fig = json.loads(out.read_text())
    assert fig["specs"] == "inferred"
    assert list(fig["untestable"]) == [untestable] and "fft" in fig["untestable"][untestable]
    assert [r["path"] for r in fig["rows"][model] if r["name"] == untestable] == ["untestable"]
    picks = [json.loads(x) for x in (tmp_path / "picks.jsonl").read_text().splitlines()]
    assert {(p["name"], p["chosen_index"]) for p in picks if p["name"] == untestable} == {(untestable, 0)}
    for key in ("selected_accuracy", "random_accuracy", "oracle", "gap_closed", "speedup_pick",
                "speedup_mean_correct", "speedup_oracle", "disagree_with_labels"):
        assert key in fig and key in fig["models"][model]
    # The comparison row: the hand-written specs, on the problem both can test.
    assert select_pareval.main(["--data", str(data), "--problems", "all", "--json", str(out), *quick,
                                "--picks", str(tmp_path / "picks.jsonl"), "--only", "55_", "--constraints",
                                str(ROOT / "bench" / "pareval" / "constraints.json")]) == 0
    fig = json.loads(out.read_text())
    assert fig["specs"] == "file" and fig["untestable"] == {}
    rows = [json.loads(x) for x in (data / "candidates.jsonl").read_text().splitlines() if json.loads(x)["name"] == name]
    labels = {r["index"]: r["labels"]["are_all_valid"] for r in rows}
    pick = json.loads((tmp_path / "picks.jsonl").read_text().splitlines()[0])
    assert pick["name"] == name and pick["model"] == model
    # relu is easy to get right: some sample is, and the pick is one of those.
    assert any(labels.values()) and labels[pick["chosen_index"]]
    assert fig["selected_accuracy"] == 1.0
    assert fig["random_accuracy"] == pytest.approx(sum(labels.values()) / len(labels))


@pytest.mark.slow
def test_select_pareval_on_an_mpi_slice(tmp_path):
    import gzip

    import select_pareval

    data = tmp_path / "data"
    name, model = "27_reduce_average", "codellama-7b-hf"
    source = bench_data("pareval-mpi-dev")
    data.mkdir()
    rows = [json.loads(x) for x in gzip.decompress((source / "candidates.jsonl.gz").read_bytes()).decode().splitlines() if x]
    # Six samples of one mixed pair: some the labels call right, some wrong.
    mine = [r for r in rows if r["name"] == name and r["model"] == model]
    right = [r for r in mine if r["labels"]["are_all_valid"]][:3]
    wrong = [r for r in mine if not r["labels"]["are_all_valid"] and r["labels"]["did_build"]][:3]
    assert right and wrong
    (data / "candidates.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in right + wrong).encode()))
    (data / "problems.jsonl").write_text("".join(x + "\n" for x in (source / "problems.jsonl").read_text().splitlines()
                                                 if x and json.loads(x)["name"] == name))
    shutil.copy(source / "score.py", data / "score.py")
    out = tmp_path / "mpi.json"
    assert select_pareval.main(["--data", str(data), "--problems", "all", "--json", str(out), "--repeats", "2",
                                "--min-time", "0.02", "--medium-tests", "1", "--picks", str(tmp_path / "picks.jsonl")]) == 0
    fig = json.loads(out.read_text())
    for key in ("selected_accuracy", "random_accuracy", "oracle", "gap_closed", "speedup_pick", "specs"):
        assert key in fig
    assert fig["dataset"] == "data" and fig["specs"] == "inferred" and fig["untestable"] == {}
    pick = json.loads((tmp_path / "picks.jsonl").read_text().splitlines()[0])
    assert {r["index"]: r["labels"]["are_all_valid"] for r in right + wrong}[pick["chosen_index"]]
    assert fig["selected_accuracy"] == 1.0 and fig["random_accuracy"] == pytest.approx(len(right) / (len(right) + len(wrong)))
