"""Data-parallel PPO (distributed.py) on the CPU: two gloo ranks under torchrun, each with its share of the step's
problems, end every step with the same adapter, value head and curriculum; rank 0 writes one run directory whose
metrics cover both ranks' rollouts, and its checkpoint resumes in a single process."""
import json
import random
import subprocess
import sys

import pytest
import torch

import curriculum
from support import distributed
import stepcoder
from support.config import UsageError
from conftest import ROOT, tiny_args

RANKS, PROBLEMS, SAMPLES = 2, 4, 2


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One 2-rank run (2 PPO steps) through tests/rank_dump.py: (run directory, flags, both ranks' records, stdout)."""
    tmp = tmp_path_factory.mktemp("ddp")
    args = tiny_args(tmp, "--steps", "2", "--no-eval", "--problems-per-step", str(PROBLEMS),
                     "--sft-steps", "40")  # some rollouts pass: the curriculum moves
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(RANKS),
                           str(ROOT / "tests" / "rank_dump.py"), str(tmp), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(RANKS)]
    return tmp / "run", args, records, proc.stdout


def test_every_rank_holds_the_same_adapter_value_head_and_curriculum_after_each_step(two_ranks):
    run, args, (rank0, rank1), _ = two_ranks
    assert len(rank0["steps"]) == len(rank1["steps"]) == 2
    for a, b in zip(rank0["steps"], rank1["steps"]):
        assert a["adapter"].keys() == b["adapter"].keys()
        assert all(torch.equal(a["adapter"][n], b["adapter"][n]) for n in a["adapter"])  # bitwise
        assert all(torch.equal(a["value_head"][n], b["value_head"][n]) for n in a["value_head"])
        assert a["curriculum"] == b["curriculum"]
    assert any(rho > 0 for step in rank0["steps"] for _, _, rho, _ in step["curriculum"]["problems"]), \
        "no pass: nothing to compare"  # (at step 2 the schedule has put every problem at stage 0, rho 0)
    progress = json.loads((run / "checkpoint" / "progress.json").read_text())  # rank 0's checkpoint of step 2
    assert progress["step"] == 2 and progress["curriculum"] == rank0["steps"][-1]["curriculum"]
    saved = torch.load(run / "checkpoint" / "state.pt", weights_only=False)["value_head"]
    assert all(torch.equal(saved[n], rank0["steps"][-1]["value_head"][n]) for n in saved)


def test_the_steps_problems_are_drawn_once_and_split_between_the_ranks(two_ranks):
    run, args, records, _ = two_ranks
    problems = curriculum.load_problems(args[args.index("--data") + 1])
    rng = random.Random(1)  # --seed 1: the draws a single process makes, passes over the data
    passes = curriculum.Curriculum(problems)
    for step in range(2):
        drawn = passes.draw(PROBLEMS, rng)
        for r, record in enumerate(records):  # rank r: every RANKS-th problem from the r-th, each SAMPLES times
            assert [pid for pid, _ in record["scored"][step]] == [pid for pid in drawn[r::RANKS] for _ in range(SAMPLES)]


def test_rank_0_writes_one_metrics_file_covering_both_ranks_rollouts(two_ranks):
    run, _, records, stdout = two_ranks
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2] and stdout.count("step 1 |") == 1  # only rank 0 prints
    for step, row in enumerate(rows):
        verdicts = [status for record in records for _, status in record["scored"][step]]
        assert len(verdicts) == PROBLEMS * SAMPLES
        for v in ("pass", "wrong_answer", "runtime_error", "timeout", "compile_error"):
            assert row[f"frac_{v}"] == verdicts.count(v) / len(verdicts)
        assert row["pass_rate"] == row["frac_pass"]
        ranks = [record["steps"][step] for record in records]
        for name in ("pg_loss", "vf_loss", "approx_kl", "clipfrac"):  # the ranks' mean
            assert row[name] == pytest.approx(sum(r["stats"][name] for r in ranks) / RANKS, rel=1e-6)
        width = max(r["mask"].shape[1] for r in ranks)  # explained_var over both ranks' tokens
        pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))
        returns, values, mask = (torch.cat([pad(r[name]) for r in ranks]) for name in ("returns", "values", "mask"))
        mask = mask.bool()
        variance = torch.var(returns[mask])  # 0 at step 1: no KL yet, every reward -1, the value head at 0
        explained = (1 - torch.var((returns - values)[mask]) / variance).item() if variance > 0 else 0.0
        assert row["explained_var"] == pytest.approx(explained, rel=1e-4, abs=1e-5)
    assert sorted(p.name for p in run.iterdir()) == ["base", "checkpoint", "config.json", "curves.png", "metrics.jsonl",
                                                    "rollouts.html", "rollouts.jsonl"]  # (the page: rank 0 alone)


def test_a_checkpoint_of_two_ranks_resumes_in_one_process(two_ranks):
    run = two_ranks[0]
    stepcoder.train(stepcoder.parse_config(["--resume", str(run), "--steps", "3"]))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert json.loads((run / "checkpoint" / "progress.json").read_text())["step"] == 3


def test_an_uneven_split_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert distributed.share(list("abcd")) == ["b", "d"]
    with pytest.raises(UsageError, match="multiple of 2"):
        distributed.share(list("abc"))
    monkeypatch.setenv("RANK", "0")  # before any process group: nothing waits for the other rank
    assert stepcoder.main(tiny_args(tmp_path, "--steps", "1", "--no-eval")) == 2  # 3 problems per step
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "3 problems per step do not split evenly over 2 processes" in err[0]
    assert not (tmp_path / "run").exists()


SIGTERM_RANK_1 = '''import os, signal, sys
sys.path.insert(0, {root!r})
import stepcoder
from support import distributed
real_generate, calls = stepcoder.generate, []
def generate(*args):  # SIGTERM reaches rank 1 alone, in step 1
    calls.append(1)
    if distributed.rank() == 1 and len(calls) == 1:
        os.kill(os.getpid(), signal.SIGTERM)
    return real_generate(*args)
stepcoder.generate = generate
sys.exit(stepcoder.main(sys.argv[1:]))
'''


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step_saved(tmp_path):
    script = tmp_path / "sigterm_rank_1.py"
    script.write_text(SIGTERM_RANK_1.format(root=str(ROOT)))
    args = tiny_args(tmp_path, "--steps", "3", "--no-eval", "--problems-per-step", str(PROBLEMS))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(RANKS),
                           str(script), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    run = tmp_path / "run"
    assert proc.returncode != 0 and "step 1 (last checkpoint: step 1)" in proc.stderr, proc.stderr[-3000:]
    assert json.loads((run / "checkpoint" / "progress.json").read_text())["step"] == 1  # rank 0 saved step 1
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]
