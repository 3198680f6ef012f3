"""The bundled problems (data/train.json, data/test.json): every canonical solution passes its
tests in the sandbox, and the set has the size and spread the project needs."""
import ast
import math
from collections import Counter

import pytest

from conftest import ROOT
from curriculum import DIFFICULTIES, load_problems, split_points

TRAIN = load_problems(ROOT / "data" / "train.json")
TEST = load_problems(ROOT / "data" / "test.json")
ALL = TRAIN + TEST


def test_every_canonical_solution_passes_in_the_sandbox():
    import sandbox
    results = sandbox.run_batch([(p.canonical_solution, p.tests) for p in ALL])
    failing = [(p.problem_id, r.status, getattr(r, "error", None)) for p, r in zip(ALL, results) if r.status != "pass"]
    assert failing == []


def test_size_and_train_test_ratio():
    assert len(ALL) >= 80
    assert 2.5 <= len(TRAIN) / len(TEST) <= 3.5


def test_ids_unique_across_both_files():
    ids = [p.problem_id for p in ALL]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("part", [ALL, TEST], ids=["all", "test"])
def test_all_three_difficulties(part):
    assert set(Counter(p.difficulty for p in part)) == set(DIFFICULTIES)


@pytest.mark.parametrize("part", [ALL, TEST], ids=["all", "test"])
def test_at_least_a_quarter_stdin_and_a_quarter_call_based(part):
    calls = sum(p.fn_name is not None for p in part)
    assert calls >= len(part) / 4 and len(part) - calls >= len(part) / 4


def solution_methods(code: str) -> set:
    return {f.name for c in ast.parse(code).body if isinstance(c, ast.ClassDef) and c.name == "Solution"
            for f in c.body if isinstance(f, ast.FunctionDef)}


def test_some_call_based_problems_are_solution_methods():
    methods = [p for p in ALL if p.fn_name is not None and p.fn_name in solution_methods(p.canonical_solution)]
    assert len(methods) >= 5


def test_split_point_counts_span_0_to_at_least_8():
    es = [len(split_points(p.canonical_solution)) for p in ALL]
    assert min(es) == 0 and max(es) >= 8
    assert {math.ceil(math.sqrt(e)) for e in es} >= {0, 1, 2, 3}  # plain-only, 1, 2 and 3 completion stages


def test_at_least_three_tests_each():
    assert min(len(p.inputs) for p in ALL) >= 3


def test_call_based_problems_name_a_function_the_solution_defines():
    for p in ALL:
        if p.fn_name is not None:
            tree = ast.parse(p.canonical_solution)
            top = {f.name for f in tree.body if isinstance(f, ast.FunctionDef)}
            assert p.fn_name in top | solution_methods(p.canonical_solution), p.problem_id
