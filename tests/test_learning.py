"""Learning happens: one PPO step of the real trainer moves the policy toward the programs that pass.

The run goes through `stepcoder.train` unchanged; we only record what it generated and scored.
Because LoRA's B matrices start at zero, the policy with its adapter disabled is exactly the
policy that generated the rollouts, so for every rollout we can compare its log-probability
before (adapter off) and after (adapter on) the update. PPO must raise the log-probability of
passing programs relative to failing ones. This fails if the advantages' sign is flipped (the
gap reverses), if the policy loss is detached (nothing moves: no gradient reaches the adapter)
or if the update is skipped.
"""
import pytest
import torch

import stepcoder
from test_stepcoder import tiny_args


@pytest.mark.slow
def test_one_ppo_step_favours_passing_programs(tmp_path, monkeypatch):
    seen = {}
    real_generate, real_score = stepcoder.generate, stepcoder.score

    def generate(policy, tok, prompt_ids, prompt_mask, *args):
        resp, lengths = real_generate(policy, tok, prompt_ids, prompt_mask, *args)
        seen.update(prompt_ids=prompt_ids, prompt_mask=prompt_mask, resp=resp, lengths=lengths)
        return resp, lengths

    def score(programs, problems, cfg):
        seen["results"] = real_score(programs, problems, cfg)
        return seen["results"]

    monkeypatch.setattr(stepcoder, "generate", generate)
    monkeypatch.setattr(stepcoder, "score", score)
    args = tiny_args(tmp_path, "--steps", "1", "--sft-steps", "120", "--problems-per-step", "8", "--samples-per-problem", "8",
                     "--minibatch-size", "16", "--max-new-tokens", "40", "--temperature", "1.0", "--top-p", "1.0",
                     "--lr", "5e-4", "--kl-coef", "0", "--no-cccs", "--seed", "0")
    _, policy, value_head = stepcoder.train(stepcoder.parse_config(args))

    resp, lengths = seen["resp"], seen["lengths"]
    G = resp.shape[1]
    mask = (torch.arange(G)[None] < lengths[:, None]).float()                       # (N, G)
    ids = torch.cat([seen["prompt_ids"], resp], 1)
    attn = torch.cat([seen["prompt_mask"], mask.long()], 1)
    policy.eval()
    with torch.no_grad():
        after, _, _ = stepcoder.forward(policy, value_head, ids, attn, G, 1.0)
        with policy.disable_adapter():
            before, _, _ = stepcoder.forward(policy, value_head, ids, attn, G, 1.0)
    delta = ((after - before) * mask).sum(1)                                         # (N,)
    passed = torch.tensor([r.status == "pass" for r in seen["results"]])
    assert 5 <= passed.sum() <= len(passed) - 5, "the fixed seed should give both outcomes"
    gap = delta[passed].mean() - delta[~passed].mean()
    assert gap > 0.2, f"log-prob gain of passing minus failing programs: {gap:.3f}"
