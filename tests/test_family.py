"""support/family.py and the generated data/family files: deterministic, correct, a held-out split of
new combinations of seen parts, CCCS stages spread, and a branch no test reaches for FGO to mask."""
import functools
import json
import math
from collections import Counter

import pytest

from support import family
from conftest import ROOT
from curriculum import load_problems, split_points, stage_prefixes

FILES = ROOT / "data" / "family"
TRAIN_RECORDS = json.loads((FILES / "train.json").read_text())
TEST_RECORDS = json.loads((FILES / "test.json").read_text())
ALL_RECORDS = TRAIN_RECORDS + TEST_RECORDS


def combo_of(record: dict) -> tuple:
    shape, steps, agg, fmt = record["family_parts"].split("/")
    return shape, tuple(steps.split("+")) if steps != "none" else (), agg, fmt


@functools.cache
def sandbox_results() -> list:
    import sandbox
    return sandbox.run_batch([(r["canonical_solution"], {"inputs": r["inputs"], "outputs": r["outputs"], "fn_name": None})
                              for r in ALL_RECORDS])


def test_same_seed_same_problems_other_seed_other_ones():
    first, again, other = family.generate(0, 30, 10), family.generate(0, 30, 10), family.generate(1, 30, 10)
    assert first == again
    assert first[0] != other[0] and first[1] != other[1]


def test_committed_files_are_what_seed_0_writes():
    assert (TRAIN_RECORDS, TEST_RECORDS) == family.generate(0, 160, 40)


def test_the_larger_family_is_what_seed_0_writes_and_its_solutions_pass():
    # data/family480: the same generator with --n-train 480 (the held-out combinations are the same 40,
    # with other constants); every canonical solution passes its tests in the sandbox.
    import sandbox
    records = [json.loads((ROOT / "data" / "family480" / f"{split}.json").read_text()) for split in ("train", "test")]
    assert tuple(records) == family.generate(0, 480, 40)
    assert {r["family_parts"] for r in records[1]} == {r["family_parts"] for r in TEST_RECORDS}
    results = sandbox.run_batch([(r["canonical_solution"], {"inputs": r["inputs"], "outputs": r["outputs"], "fn_name": None})
                                 for r in records[0] + records[1]])
    assert [r.status for r in results] == ["pass"] * 520


def test_every_canonical_solution_passes_its_tests_in_the_sandbox():
    failing = [(r["problem_id"], res.status, res.error) for r, res in zip(ALL_RECORDS, sandbox_results()) if res.status != "pass"]
    assert failing == []


def test_held_out_combinations_are_absent_from_training_and_their_parts_present():
    train = {combo_of(r) for r in TRAIN_RECORDS}
    test = [combo_of(r) for r in TEST_RECORDS]
    assert not train & set(test)
    assert all(family.held_out(c) for c in test) and not any(family.held_out(c) for c in train)
    seen = set().union(*(family.parts(c) for c in train))
    assert [c for c in test if not family.parts(c) <= seen] == []


def test_files_load_with_the_curriculum_loader():
    train, test = load_problems(FILES / "train.json"), load_problems(FILES / "test.json")
    assert (len(train), len(test)) == (160, 40)
    ids = [p.problem_id for p in train + test]
    assert len(set(ids)) == len(ids)
    assert all(p.fn_name is None and len(p.inputs) == len(p.outputs) >= 5 for p in train + test)


@pytest.mark.parametrize("records", [ALL_RECORDS, TEST_RECORDS], ids=["all", "test"])
def test_conditional_counts_spread_from_1_to_9(records):
    counts = Counter(len(split_points(r["canonical_solution"])) for r in records)
    assert set(counts) == set(range(1, 10))
    assert max(counts.values()) <= len(records) / 6  # about flat: no count dominates (drawn at random: 20% at E=6)
    stages = {len(stage_prefixes(r["canonical_solution"])) - 1 for r in records}
    assert stages >= {1, 2, 3}  # K completion stages: 1, 2 and 3
    assert {math.ceil(math.sqrt(e)) for e in counts} >= {1, 2, 3}


def test_some_solution_has_a_line_its_tests_never_run():
    never_run, guarded = [], []  # problems with lines no test runs; count-shape problems whose guard's body none runs
    for record, result in zip(ALL_RECORDS, sandbox_results()):
        lines = record["canonical_solution"].splitlines()
        code_lines = {n for n, line in enumerate(lines, 1) if line.strip()}
        if result.coverage_complete and code_lines - result.executed_lines:
            never_run.append(record["problem_id"])
        if record["family_parts"].startswith("count/"):
            guarded.append(result.coverage_complete and "    nums = nums[:n]" in lines
                           and lines.index("    nums = nums[:n]") + 1 not in result.executed_lines)
    assert len(never_run) >= 10
    assert len(guarded) >= 10 and all(guarded)  # the defensive case FGO masks (family.py's docstring)


def test_tests_are_not_all_the_same_output():
    constant = [r["problem_id"] for r in ALL_RECORDS if len(set(r["outputs"])) == 1]
    assert len(constant) <= len(ALL_RECORDS) / 20


def test_programs_and_prompts_fit_the_tiny_budgets():
    assert max(len(r["canonical_solution"]) for r in ALL_RECORDS) <= 480  # 160 tokens at 3 characters a token
    assert max(len(r["question"]) for r in ALL_RECORDS) <= 1200


def test_cli_writes_refuses_to_overwrite_and_rejects_bad_sizes(tmp_path, capsys):
    assert family.main(["--out", str(tmp_path), "--seed", "3", "--n-train", "12", "--n-test", "4"]) == 0
    out = capsys.readouterr().out
    assert "12 train problems" in out and "E=" in out
    assert len(load_problems(tmp_path / "train.json")) == 12
    before = (tmp_path / "train.json").read_text()
    for argv in (["--out", str(tmp_path)], ["--out", str(tmp_path / "new"), "--n-test", "0"], ["--out", str(tmp_path), "--bogus"]):
        with pytest.raises(SystemExit) as stop:
            family.main(argv)
        assert stop.value.code == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert (tmp_path / "train.json").read_text() == before
    assert family.main(["--out", str(tmp_path), "--seed", "3", "--n-train", "5", "--n-test", "2", "--overwrite"]) == 0
    assert len(load_problems(tmp_path / "train.json")) == 5


def test_the_curriculum_demo_splits_family480_in_file_order():
    train = json.loads((ROOT / "data" / "family480" / "train.json").read_text())
    sft = json.loads((ROOT / "data" / "family480" / "sft.json").read_text())
    rl = json.loads((ROOT / "data" / "family480" / "rl.json").read_text())
    assert (len(sft), len(rl)) == (360, 120) and sft + rl == train
