"""GRPO beside PPO (--algo grpo): the group advantages and the KL term by hand, what the update touches,
and a tiny run through the trainer, resumed."""
import json
import math
from types import SimpleNamespace

import pytest
import torch

import stepcoder
from conftest import run_cli, tiny_args
from stepcoder import group_advantages, k3_kl, policy_loss
from support import distributed


def test_group_advantages_by_hand():
    # Groups of 2: (1, -0.3): mean 0.35, std (n - 1) = 1.3 / sqrt 2 -> +-0.65 / (0.9192 + 1e-4);
    # (-0.6, -0.6): all equal -> 0. Two action tokens on the first row, three on the others.
    scores = torch.tensor([1.0, -0.3, -0.6, -0.6])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    advantages = group_advantages(scores, 2, mask)
    a = 0.65 / (1.3 / math.sqrt(2) + 1e-4)
    expected = torch.tensor([[a, a, 0.0], [-a, -a, -a], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(advantages, expected, atol=1e-6)


def test_group_advantages_are_over_each_group_only():
    # A group of 3 that all pass beside one that all fail: over the whole batch they would be +-1;
    # within each group there is nothing to prefer. Then (1, 1, -1): mean 1/3, std 2/sqrt(3).
    mask = torch.ones(6, 2)
    assert torch.equal(group_advantages(torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0]), 3, mask), torch.zeros(6, 2))
    mixed = group_advantages(torch.tensor([1.0, 1.0, -1.0, 0.5, 0.5, 0.5]), 3, mask)
    std = 2 / math.sqrt(3)
    assert mixed[:, 0].tolist() == pytest.approx([(2 / 3) / (std + 1e-4)] * 2 + [(-4 / 3) / (std + 1e-4)] + [0.0] * 3,
                                                 abs=1e-5)
    assert torch.equal(mixed[:, 0], mixed[:, 1])  # the same on every action token of a rollout


def test_an_all_equal_group_gives_no_policy_gradient():
    logprobs = torch.tensor([[-1.0, -2.0], [-0.5, -1.5]], requires_grad=True)
    advantages = group_advantages(torch.tensor([-0.3, -0.3]), 2, torch.ones(2, 2))
    pg_loss, *_ = policy_loss(logprobs, logprobs.detach() + 0.1, advantages, torch.ones(2, 2), 0.2)
    pg_loss.backward()
    assert torch.equal(logprobs.grad, torch.zeros(2, 2))


def test_k3_kl_estimates_kl_to_the_reference_and_pulls_toward_it():
    # log pi = log 0.5, log pi_ref = log 0.25 on the kept token: r = pi_ref / pi = 0.5, k3 = r - log r - 1.
    logprobs = torch.tensor([[math.log(0.5), 0.0]], requires_grad=True)
    ref_logprobs = torch.tensor([[math.log(0.25), 5.0]])
    kl = k3_kl(logprobs, ref_logprobs, torch.tensor([[1.0, 0.0]]))  # the second token is padding
    assert kl.item() == pytest.approx(0.5 - math.log(0.5) - 1, abs=1e-6)
    kl.backward()
    assert logprobs.grad[0, 0] > 0  # descending the loss lowers log pi where pi > pi_ref
    assert logprobs.grad[0, 1] == 0
    same = torch.tensor([[-1.3, -0.2]])
    assert k3_kl(same, same, torch.ones(1, 2)).item() == 0.0


def test_grpo_keeps_fgo_to_the_policy_term_and_the_kl_on_every_action(monkeypatch):
    # ppo_update with a stand-in forward: record which mask each loss term gets.
    logits = torch.nn.Parameter(torch.zeros(4, 3))
    seen = {}
    def forward_rows(policy, value_head, ids, attention_mask, n_gen, cfg):
        seen["value_head"] = value_head
        return torch.log_softmax(logits, -1)[ids[:, 0]], torch.zeros(len(ids), 3)
    def spy(name, function):
        def wrapped(*args):
            seen[name] = args[3] if name == "policy_loss" else args[2]
            return function(*args)
        return wrapped
    monkeypatch.setattr(stepcoder, "forward_rows", forward_rows)
    monkeypatch.setattr(stepcoder, "policy_loss", spy("policy_loss", stepcoder.policy_loss))
    monkeypatch.setattr(stepcoder, "k3_kl", spy("k3_kl", stepcoder.k3_kl))
    mask = torch.ones(4, 3)
    fgo = torch.tensor([[1.0, 0.0, 0.0]] * 4)
    batch = {"ids": torch.arange(4)[:, None].repeat(1, 3), "attn": torch.ones(4, 3), "n_gen": 3, "mask": mask,
             "fgo": fgo, "logprobs": torch.full((4, 3), -1.0), "ref_logprobs": torch.full((4, 3), -1.2),
             "advantages": torch.ones(4, 3), "values": torch.zeros(4, 3), "returns": torch.zeros(4, 3)}
    cfg = stepcoder.Config(algo="grpo", ppo_epochs=1)
    policy = torch.nn.Module()
    value_head = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD([logits], lr=0.1)
    stats = stepcoder.ppo_update(policy, value_head, optimizer, [logits], batch, [torch.arange(4)], cfg,
                                  torch.amp.GradScaler("cpu", enabled=False))
    assert torch.equal(seen["policy_loss"], fgo) and torch.equal(seen["k3_kl"], mask)
    assert seen["value_head"] is None  # no value head forward
    assert stats["vf_loss"] == 0.0 and stats["kl_loss"] > 0.0


def test_a_group_with_a_sandbox_failure_is_left_out(monkeypatch):
    # rows 2-3 are a group whose second sample the sandbox failed on (score 0, b_mask all 0): its baseline would
    # count a reward the judge never gave, so the group gets no advantage; the judged group (1, -0.3) keeps its own.
    monkeypatch.setattr(stepcoder, "logprobs_before_update", lambda *args: (torch.zeros(4, 2),) * 4)
    results = [SimpleNamespace(reward=r) for r in (1.0, -0.3, 1.0, 0.0)]
    b_mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    rollouts = SimpleNamespace(ids=None, attention_mask=None, n_gen=2)
    cfg = stepcoder.Config(algo="grpo", samples_per_problem=2)
    b = stepcoder.compute_advantages(None, None, rollouts, results, b_mask, [], cfg)
    a = 0.65 / (1.3 / math.sqrt(2) + 1e-4)
    assert torch.allclose(b["advantages"], torch.tensor([[a, a], [-a, 0.0], [0.0, 0.0], [0.0, 0.0]]), atol=1e-6)


def test_every_group_stays_on_one_rank(monkeypatch):
    # ppo_loop shares the step's problems over the ranks, then repeats each samples_per_problem times:
    # a group's rows are consecutive rows of one rank.
    drawn = list(range(8))
    rows = {}
    for rank in (0, 1):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        rows[rank] = [p for p in distributed.share(drawn) for _ in range(4)]
    for rank_rows in rows.values():
        groups = [rank_rows[i:i + 4] for i in range(0, len(rank_rows), 4)]
        assert all(len(set(group)) == 1 for group in groups)
    assert sorted(rows[0] + rows[1]) == sorted(p for p in drawn for _ in range(4))


def test_grpo_with_one_sample_per_problem_is_refused(tmp_path):
    proc = run_cli(tiny_args(tmp_path, "--algo", "grpo") + ["--samples-per-problem", "1"])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "--samples-per-problem" in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_tiny_grpo_run_trains_the_adapter_not_the_value_head_and_resumes(tmp_path):
    cfg = stepcoder.parse_config(tiny_args(tmp_path, "--algo", "grpo", "--steps", "2", "--no-eval", "--lr", "1e-2"))
    run_dir, policy, value_head = stepcoder.train(cfg)
    assert all(torch.equal(p, torch.zeros_like(p)) for p in value_head.parameters())  # zero-initialised, untouched
    assert any(v.abs().sum() > 0 for k, v in policy.state_dict().items() if "lora_B" in k)  # the adapter learned
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["vf_loss"] for r in rows] == [0.0, 0.0] and rows[-1]["kl_loss"] > 0
    stepcoder.train(stepcoder.parse_config(["--resume", str(run_dir), "--steps", "3"]))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["vf_loss"] == 0.0
    assert json.loads((run_dir / "config.json").read_text())["algo"] == "grpo"
