"""pass@k and its 95% interval over problems: the estimator and the interval against hand-computed values,
the evaluation report with generation and the sandbox stubbed (no training), and the summary's line from
hand-written eval_step<N>.json files."""
import dataclasses
import json
import math
import statistics
from types import SimpleNamespace

import pytest
import torch

import curriculum
import stepcoder
from conftest import tiny_args
from support import evaluation, models, runs
from support.evaluation import interval95, pass_at_k, pass_at_ks


# ----------------------------------------------------------------- the estimator, by hand ---

def test_pass_at_k_matches_hand_computed_values():
    # 1 - C(n-c, k) / C(n, k): n=5, c=2, k=2 -> 1 - C(3,2)/C(5,2) = 1 - 3/10; k=3 -> 1 - C(3,3)/C(5,3) = 1 - 1/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)       # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(8, 1, 8) == 1.0 and pass_at_k(8, 0, 8) == 0.0  # pass@n: whether any sample passes
    for n in range(1, 9):
        for k in range(1, n + 1):
            assert pass_at_k(n, 0, k) == 0.0                  # no sample passes
            assert pass_at_k(n, n, k) == 1.0                  # every sample passes
        for c in range(n + 1):
            assert pass_at_k(n, c, 1) == pytest.approx(c / n)  # k = 1: the pass rate
            for k in range(1, n + 1):                          # the product form is the binomial one
                assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))


def test_pass_at_k_is_stable_for_many_samples_and_refuses_k_over_n():
    # n = 200 (Chen et al.'s budget): the binomials are ~1e58 but the product form stays in [0, 1]
    assert pass_at_k(200, 1, 100) == pytest.approx(0.5)     # 1 - C(199,100)/C(200,100) = 1 - 100/200
    assert 0.0 < pass_at_k(200, 3, 10) < 1.0
    for n, c, k in ((4, 1, 5), (4, 1, 0), (4, 5, 1), (4, -1, 1)):
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_interval95_is_the_normal_approximation_over_problems():
    # values 0, .5, 1, .5: mean .5; sample variance (.25 + 0 + .25 + 0) / 3 = 1/6, sd .408248;
    # half width 1.96 * .408248 / sqrt(4) = .400083
    lo, hi = interval95([0.0, 0.5, 1.0, 0.5])
    assert (lo, hi) == pytest.approx((0.5 - 0.400083, 0.5 + 0.400083), abs=1e-6)
    # 0, 0, 0, 1: mean .25, sd sqrt(.75 / 3) = .5, half width .49: [-.24, .74], clipped at 0
    assert interval95([0.0, 0.0, 0.0, 1.0]) == pytest.approx([0.0, 0.74])
    assert interval95([1.0, 1.0, 1.0]) == [1.0, 1.0]       # no spread over problems
    assert interval95([0.3]) == [0.0, 1.0]                 # one problem: no spread to estimate


def test_pass_at_ks_takes_1_the_powers_of_2_and_n():
    assert list(pass_at_ks([0, 1], 8)["pass@k"]) == ["1", "2", "4", "8"]
    assert list(pass_at_ks([0, 1], 6)["pass@k"]) == ["1", "2", "4", "6"]
    assert list(pass_at_ks([0, 1], 1)["pass@k"]) == ["1"] and list(pass_at_ks([0, 1], 1)["ci95"]) == ["pass@1"]
    row = pass_at_ks([0, 1, 4, 2], 4)  # per problem pass@2: 0, 1 - 3/6, 1, 1 - 1/6
    assert row["samples"] == 4 and list(row["ci95"]) == ["pass@1", "pass@4"]
    assert row["pass@k"]["1"] == pytest.approx(7 / 16)
    assert row["pass@k"]["2"] == pytest.approx((0 + 0.5 + 1 + 5 / 6) / 4)
    assert row["pass@k"]["4"] == pytest.approx(3 / 4)
    assert row["ci95"]["pass@4"] == pytest.approx(interval95([0.0, 1.0, 1.0, 1.0]))


# ---------------------------------------------------- the evaluation report, nothing trained ---

PASSING = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 4, 100: 0, 101: 0, 102: 1, 103: 2, 104: 4, 105: 0}  # of 4 samples


FAILING = {}  # (problem, sample) -> the status of a sample that does not pass, where not a compile error


def evaluate_stubbed(tmp_path, monkeypatch, **settings) -> tuple[dict, list]:
    """evaluation.evaluate on conftest's 12 problems with a tiny tokenizer, generation stubbed (one EOS per row)
    and the sandbox stubbed: sample j of problem p passes if j < PASSING[p] (greedy: j = 0)."""
    cfg = dataclasses.replace(stepcoder.parse_config(tiny_args(tmp_path, "--eval-samples", "4")), **settings)
    problems = curriculum.load_problems(cfg.data)
    tok, _ = models.build_tiny(problems, 0)
    def generate(sampler, tok, ids, attention_mask, *args):
        return torch.full((len(ids), 1), tok.eos_token_id), torch.ones(len(ids), dtype=torch.long)
    def sandbox_results(programs, samples, cfg):
        n = len(samples) // len(problems)
        return [SimpleNamespace(status="pass", reward=1.0) if i % n < PASSING[p.problem_id] else
                SimpleNamespace(status=FAILING.get((p.problem_id, i % n), "compile_error"),
                                reward=-1.0 if (p.problem_id, i % n) not in FAILING else math.nan)
                for i, p in enumerate(samples)]
    monkeypatch.setattr(stepcoder, "generate", generate)
    monkeypatch.setattr(stepcoder, "sandbox_results", sandbox_results)
    agent = SimpleNamespace(tok=tok, sampler=None, device=torch.device("cpu"))
    return json.loads(json.dumps(evaluation.evaluate(agent, problems, cfg, "test"))), problems  # as written to disk


def test_the_report_has_pass_at_k_its_intervals_and_each_problems_passing_samples(tmp_path, monkeypatch):
    # fails if pass@k is not Chen et al.'s mean over problems, an interval is not over problems, the
    # passing samples are not recorded, or an existing key changes meaning
    report, problems = evaluate_stubbed(tmp_path, monkeypatch)
    overall = report["overall"]
    counts = [PASSING[p.problem_id] for p in problems]
    assert overall["n"] == 12 and overall["samples"] == 4 and list(overall["pass@k"]) == ["1", "2", "4"]
    assert overall["pass@1"] == pytest.approx(sum(counts) / 48)            # unchanged: the samples' pass rate
    assert overall["greedy"] == pytest.approx(sum(c > 0 for c in counts) / 12)  # greedy passes where j = 0 does
    for k in (1, 2, 4):
        expected = statistics.mean(1 - math.comb(4 - c, k) / math.comb(4, k) for c in counts)
        assert overall["pass@k"][str(k)] == pytest.approx(expected)
    assert overall["pass@k"]["1"] == pytest.approx(overall["pass@1"])
    assert overall["pass@k"]["4"] == pytest.approx(8 / 12)                 # 8 of 12 problems have a passing sample
    # pass@1's interval by hand: rates c/4 over the 12 problems, mean +- 1.96 sd / sqrt(12)
    rates = [c / 4 for c in counts]
    half = 1.96 * statistics.stdev(rates) / math.sqrt(12)
    assert overall["ci95"]["pass@1"] == pytest.approx([statistics.mean(rates) - half, statistics.mean(rates) + half])
    assert overall["ci95"]["pass@4"] == pytest.approx(interval95([float(c > 0) for c in counts]))
    # a difficulty's row is over its own problems: competition = problems 2 and 5, 2 and 4 of 4 samples
    competition = report["competition"]
    assert competition["n"] == 2 and competition["pass@k"]["1"] == pytest.approx(0.75)
    assert competition["pass@k"]["2"] == pytest.approx((5 / 6 + 1) / 2) and competition["pass@k"]["4"] == 1.0
    # each problem: its rates as before, and its passing samples, from which pass@k recomputes
    for p in problems:
        rates = report["problems"][str(p.problem_id)]
        c = PASSING[p.problem_id]
        assert rates == {"greedy": float(c > 0), "pass@1": c / 4, "passed": c}
    recomputed = statistics.mean(pass_at_k(overall["samples"], rates["passed"], 2) for rates in report["problems"].values())
    assert recomputed == pytest.approx(overall["pass@k"]["2"])


def test_samples_the_sandbox_failed_on_are_left_out_of_their_problem_and_counted(tmp_path, monkeypatch):
    # problem 0 (0 of 4 pass) loses its samples 1-3, problem 2 (2 of 4) its sample 3: judged 1 and 3 samples.
    # Counted as failures, pass@1 would be 14/48; left out, each problem's rate is over its own samples.
    for key in ((0, 1), (0, 2), (0, 3), (2, 3)):
        monkeypatch.setitem(FAILING, key, "sandbox_error")
    report, problems = evaluate_stubbed(tmp_path, monkeypatch)
    overall, counts = report["overall"], [PASSING[p.problem_id] for p in problems]
    judged = [1 if p.problem_id == 0 else 3 if p.problem_id == 2 else 4 for p in problems]
    assert overall["sandbox_errors"] == 4 and report["competition"]["sandbox_errors"] == 1  # problem 2: competition
    assert overall["pass@1"] == pytest.approx(sum(counts) / 44) and math.isfinite(overall["reward"])
    assert overall["pass@k"]["1"] == pytest.approx(statistics.mean(c / m for c, m in zip(counts, judged)))
    assert overall["pass@k"]["2"] == pytest.approx(statistics.mean(pass_at_k(m, c, 2) for c, m in zip(counts, judged) if m >= 2))
    assert report["problems"]["2"] == {"greedy": 1.0, "pass@1": 2 / 3, "passed": 2, "judged": 3}
    assert report["introductory"]["sandbox_errors"] == 3 and "sandbox_errors" not in report["interview"]


def test_pass_at_ks_takes_each_problem_s_own_n():
    row = pass_at_ks([1, 2, 0], [2, 4, 1])  # pass@1: 1/2, 2/4, 0; pass@2 over the first two; pass@4 the second's
    assert row["samples"] == 4 and list(row["pass@k"]) == ["1", "2", "4"]
    assert row["pass@k"] == pytest.approx({"1": 1 / 3, "2": (1 + 1 - 1 / 6) / 2, "4": 1.0})


def test_a_greedy_only_report_has_pass_at_1_from_its_one_decode(tmp_path, monkeypatch):
    # held-out problems without --eval-test-sampled: one greedy decode, so pass@k has k = 1 only
    report, problems = evaluate_stubbed(tmp_path, monkeypatch, eval_temperature=0.0)
    overall = report["overall"]
    solved = [float(PASSING[p.problem_id] > 0) for p in problems]
    assert overall["samples"] == 1 and overall["pass@k"] == {"1": pytest.approx(8 / 12)}
    assert overall["pass@1"] == overall["greedy"] == pytest.approx(8 / 12)
    assert overall["ci95"] == {"pass@1": pytest.approx(interval95(solved))}
    assert all(set(rates) == {"greedy", "passed"} and rates["passed"] == rates["greedy"]
               for rates in report["problems"].values())


# ------------------------------------------------------------ the summary, from JSON by hand ---

def row(pass1: float, greedy: float, n: int, pass_k: dict | None = None, ci95: dict | None = None) -> dict:
    extra = {"pass@k": pass_k, "ci95": ci95, "samples": int(max(pass_k, key=int))} if pass_k else {}
    return {"pass@1": pass1, "reward": 0.0, "greedy": greedy, "n": n, **extra}


def write_run(run_dir, before: dict, after: dict) -> None:
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    (run_dir / "eval_step0.json").write_text(json.dumps(before))
    (run_dir / "eval_step5.json").write_text(json.dumps(after))


def test_the_summary_prints_pass_at_1_with_its_interval_and_pass_at_the_largest_k(tmp_path, capsys):
    # fails if the line is missing, shows another k than the largest, loses an interval, or an existing line
    before = {"train": {"overall": row(0.25, 0.25, 12, {"1": 0.25, "2": 0.375, "4": 0.45, "8": 0.5},
                                       {"pass@1": [0.1, 0.4], "pass@8": [0.2, 0.8]}), "problems": {}},
              "test": {"overall": row(0.5, 0.5, 4, {"1": 0.5}, {"pass@1": [0.0, 1.0]}), "problems": {}}}
    after = {"train": {"overall": row(0.375, 0.5, 12, {"1": 0.375, "2": 0.5, "4": 0.6, "8": 0.6667},
                                      {"pass@1": [0.2, 0.55], "pass@8": [0.4, 0.9333]}), "problems": {}},
             "test": {"overall": row(0.75, 0.75, 4, {"1": 0.75}, {"pass@1": [0.25, 1.0]}), "problems": {}}}
    write_run(tmp_path / "run", before, after)
    assert runs.main([str(tmp_path / "run")]) == 0  # python3 -m support.runs RUN
    lines = capsys.readouterr().out.splitlines()
    assert "pass@1 at stage 0, step0 -> step5:" in lines
    assert "  train overall      0.250 -> 0.375 (greedy 0.250 -> 0.500, n=12)" in lines
    train = lines.index("  train overall      0.250 -> 0.375 (greedy 0.250 -> 0.500, n=12)")
    assert lines[train + 1] == ("  train pass@1 0.250 [0.100, 0.400] -> 0.375 [0.200, 0.550], "
                                "pass@8 0.500 [0.200, 0.800] -> 0.667 [0.400, 0.933] "
                                "(95% intervals over 12 problems, normal approximation)")
    assert ("  test  pass@1 0.500 [0.000, 1.000] -> 0.750 [0.250, 1.000] "
            "(95% intervals over 4 problems, normal approximation)") in lines  # greedy only: k = 1
    assert runs.summary(tmp_path / "run").splitlines()[1:] == lines[1:]    # the end summary: the same lines


def test_the_summary_reads_reports_written_before_pass_at_k(tmp_path):
    # a run resumed across the change: its first report lacks pass@k ("-"); two old reports: no new line
    old = {"train": {"overall": row(0.25, 0.25, 12), "problems": {}}}
    new = {"train": {"overall": row(0.375, 0.5, 12, {"1": 0.375, "2": 0.5}, {"pass@1": [0.2, 0.55], "pass@2": [0.3, 0.7]}),
                     "problems": {}}}
    write_run(tmp_path / "mixed", old, new)
    assert ("  train pass@1 - -> 0.375 [0.200, 0.550], pass@2 - -> 0.500 [0.300, 0.700] "
            "(95% intervals over 12 problems, normal approximation)") in runs.summary(tmp_path / "mixed").splitlines()
    write_run(tmp_path / "old", old, old)
    assert not any("95% intervals" in line for line in runs.summary(tmp_path / "old").splitlines())
