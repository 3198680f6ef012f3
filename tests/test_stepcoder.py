"""stepcoder.py: the PPO pieces against hand-computed values, then the trainer with --model tiny."""
import dataclasses
import importlib.util
import itertools
import json
import math
import random
from types import SimpleNamespace

import pytest
import torch

from support import models, runs
import sandbox
import stepcoder
from conftest import ROOT, run_cli, tiny_args, write_problems
from stepcoder import compute_gae, fgo_mask, kl_penalized_rewards, policy_loss, value_loss


# ------------------------------------------------------------- pure functions, by hand ---

def test_gae_matches_hand_computation():
    # gamma = 1, lam = 0.5. Row 0: three generated tokens. Row 1: two tokens then padding,
    # whose value (9.0) must not leak into the advantage of the last real token.
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.2, 0.4], [0.5, 0.2, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = compute_gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 0: d2 = 1 - .4 = .6; d1 = .4 - .2 = .2, A1 = .2 + .5*.6 = .5; d0 = .2 - .5 = -.3, A0 = -.3 + .25
    # row 1: A1 = 1 - .2 = .8; A0 = (.2 - .5) + .5*.8 = .1; the padded column is 0
    assert torch.allclose(adv, torch.tensor([[-0.05, 0.5, 0.6], [0.1, 0.8, 0.0]]), atol=1e-6)
    assert torch.allclose(ret[0], torch.tensor([0.45, 0.7, 1.0]), atol=1e-6)


def test_gae_discounts_with_gamma():
    adv, _ = compute_gae(torch.tensor([[0.0, 1.0]]), torch.zeros(1, 2), torch.ones(1, 2), gamma=0.9, lam=1.0)
    assert torch.allclose(adv, torch.tensor([[0.9, 1.0]]))


def test_kl_penalty_on_every_token_and_score_on_the_last():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    rewards, kl = kl_penalized_rewards(logprobs, ref, torch.tensor([1.0]), mask, kl_coef=0.1)
    assert torch.allclose(kl, torch.tensor([[0.5, 0.0, 0.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.05, 1.0, 0.0]]))


def test_policy_loss_clips_both_ways():
    new = torch.log(torch.tensor([[1.5, 0.5]]))
    old = torch.zeros(1, 2)
    adv = torch.tensor([[1.0, -1.0]])
    loss, ratio, approx_kl, clipfrac = policy_loss(new, old, adv, torch.ones(1, 2), clip_coef=0.2)
    # token 0: max(-1.5, -1.2) = -1.2; token 1: max(0.5, 0.8) = 0.8; mean -0.2
    assert loss.item() == pytest.approx(-0.2, abs=1e-6)
    assert clipfrac.item() == 1.0
    assert approx_kl.item() == pytest.approx(((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5))) / 2, abs=1e-6)


def test_policy_loss_averages_over_the_fgo_tokens_only():
    new = torch.log(torch.tensor([[1.5, 0.5]]))
    loss, *_ = policy_loss(new, torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]), torch.tensor([[1.0, 0.0]]), 0.2)
    assert loss.item() == pytest.approx(-1.2, abs=1e-6)


def test_value_loss_takes_the_clipped_term_when_larger():
    # unclipped: (1 - 2)^2 = 1; clipped value 0.2: (0.2 - 2)^2 = 3.24; loss 0.5 * 3.24
    loss = value_loss(torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[2.0]]), torch.ones(1, 1), 0.2)
    assert loss.item() == pytest.approx(1.62, abs=1e-6)


def test_fgo_mask_hand_example():
    # The generated text starts on program line 3; lines 3, 4 and 8 ran; line 5 never ran,
    # line 6 is a comment and line 7 is blank. Token 2 spans the end of line 4 and the
    # indentation of line 5: one executed character is enough to keep it. Token 7 is EOS.
    pieces = ["x = 1\n", "if x > 5:", "\n    ", "y = 2\n", "# note\n", "\n", "print(x)\n", ""]
    text = "".join(pieces)
    ends = [sum(len(p) for p in pieces[:i + 1]) for i in range(len(pieces))]
    mask = fgo_mask(ends, text, first_line=3, executed_lines=frozenset({1, 2, 3, 4, 8}), eos_index=7)
    assert mask == [1, 1, 1, 0, 0, 0, 1, 1]


@pytest.mark.parametrize("end", ["\n", "\r", "\r\n"])
def test_fgo_mask_numbers_lines_as_the_sandbox_does(end):
    # Python (and the sandbox) also ends a line at a lone \r: FGO must mask the tokens of the line that never ran
    prefix = stepcoder.prompt_prefix(end.join(["x = int('7')", "if x > 5:"]) + end)
    generated = end + end.join(["    y = 1", "else:", "    y = 2", "print(y)"]) + end
    result = sandbox.run_tests(prefix + generated, {"inputs": [""], "outputs": ["1"], "fn_name": None})
    assert result.status == "pass" and result.executed_lines == {1, 2, 3, 6}
    lines = generated.split(end)  # the tokens: each line break, then each line
    ends = list(itertools.accumulate(len(piece) for line in lines[1:] for piece in (end, line)))
    mask = stepcoder.rollout_fgo_mask(ends, generated, prefix, result, eos_index=None)
    assert mask == [1, 1, 1, 0, 0, 0, 0, 1, 1, 0]  # lines 4 ("else:") and 5 never ran; the last token is empty


def test_fgo_mask_keeps_everything_when_the_program_does_not_compile():
    assert fgo_mask([3, 6, 6], "x =(\n ", 1, None, eos_index=2) == [1, 1, 1]


def test_fgo_mask_drops_tokens_cut_off_the_program():
    # "print(1)\n" is the program; "```" after it was cut (instruct prompts), so it is no line.
    assert fgo_mask([9, 12], "print(1)\n", 1, frozenset({1}), eos_index=None) == [1, 0]


# -------------------------------------------------------------- the trainer, tiny model ---

def test_log_probs_in_chunks_equal_one_pass_with_their_gradients():
    # token_logprobs keeps one chunk's float32 copies at a time and recomputes them in the backward pass:
    # the log-probs, the entropy and the gradient must be those of one log_softmax over everything
    torch.manual_seed(0)
    logits = torch.randn(3, 70, 50, requires_grad=True)                             # (B, G, V)
    tokens = torch.randint(0, 50, (3, 70))
    logprobs, entropy = stepcoder.token_logprobs(logits, tokens, 0.7, chunk=16)     # 70 = 4 x 16 + 6
    (logprobs * torch.arange(70)).sum().backward()
    chunked_grad, logits.grad = logits.grad, None
    logp_all = torch.log_softmax(logits / 0.7, dim=-1)
    expected = logp_all.gather(-1, tokens[..., None]).squeeze(-1)
    (expected * torch.arange(70)).sum().backward()
    assert torch.allclose(logprobs, expected, atol=1e-6)
    assert torch.allclose(entropy, -(logp_all.exp() * logp_all).sum(-1), atol=1e-6)
    assert torch.allclose(chunked_grad, logits.grad, atol=1e-6)
    with torch.no_grad():  # the path without gradients (old log-probs, reference): no checkpoint
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(stepcoder.token_logprobs(logits, tokens, 0.7, chunk=16),
                                                                     (logprobs, entropy)))


def test_the_merged_sampler_decodes_as_the_policy_and_follows_its_updates(tmp_path, monkeypatch):
    # --sampler merged (the default) samples from a plain copy with the adapter merged in: at every
    # rollout and evaluation it must give the policy's next-token distribution (float rounding apart),
    # also after the updates have changed the adapter; --sampler policy samples from the policy itself
    gaps, generate, built = [], stepcoder.generate, {}
    def checking(sampler, tok, ids, am, *args):
        policy = built["policy"]
        with torch.no_grad():
            policy.eval()
            probe = dict(input_ids=ids[:2], attention_mask=am[:2])
            gaps.append((sampler is policy, (sampler(**probe).logits[:, -1] - policy(**probe).logits[:, -1]).abs().max().item()))
        return generate(sampler, tok, ids, am, *args)
    make_sampler = models.make_sampler
    def remember(policy_model, config):  # the test reads the policy the trainer builds
        built["policy"] = policy_model
        return make_sampler(policy_model, config)
    monkeypatch.setattr(stepcoder, "generate", checking)
    monkeypatch.setattr(models, "make_sampler", remember)
    for sampler_flag in ("merged", "policy"):
        gaps.clear()
        stepcoder.train(stepcoder.parse_config(tiny_args(tmp_path, "--steps", "3", "--lr", "1e-2", "--sampler", sampler_flag,
                                                         "--out", str(tmp_path / sampler_flag))))
        assert len(gaps) == 3 + 4  # 3 rollouts; 2 evaluations x (greedy, sampled) (--test-data is --data here)
        assert all(is_policy == (sampler_flag == "policy") for is_policy, _ in gaps)
        assert max(gap for _, gap in gaps) < 1e-4, gaps


def test_ratio_is_one_on_the_first_minibatch(tmp_path):
    problems = stepcoder.curriculum.load_problems(write_problems(tmp_path / "p.json"))
    cfg = stepcoder.Config(model="tiny", lora_r=4)
    tok, model = models.build_tiny(problems, seed=0)
    policy, value_head = models.add_adapter(model, cfg)
    with torch.no_grad():  # make the adapter non-trivial, as after some updates
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    texts = [stepcoder.curriculum.build_prompt(p) + p.canonical_solution for p in problems[:6]]
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="left")
    ids, am = enc["input_ids"], enc["attention_mask"]
    policy.eval()
    with torch.no_grad():
        old, _, _ = stepcoder.logprobs_and_values(policy, value_head, ids, am, 20, temperature=0.8)
    policy.train()
    mb = torch.tensor([4, 1, 3])  # a shuffled minibatch, as in the update
    new, _, _ = stepcoder.logprobs_and_values(policy, value_head, ids[mb], am[mb], 20, temperature=0.8)
    ratio = (new - old[mb]).exp()
    assert new.requires_grad
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5)


def test_a_row_gets_the_same_results_alone_and_in_a_left_padded_batch(tmp_path):
    # Batches are left-padded to their longest prompt, and to the longest of the whole step or
    # evaluation (columns every row pads, which drop_shared_padding removes). With the attention mask
    # (and positions from it) a row's log-probs, values and greedy continuation are those it gets
    # alone; dropping the shared columns must keep that (fails if it drops one column too many).
    problems = stepcoder.curriculum.load_problems(write_problems(tmp_path / "p.json"))
    tok, model = models.build_tiny(problems, seed=0)
    policy, value_head = models.add_adapter(model, stepcoder.Config(model="tiny", lora_r=4))
    texts = [stepcoder.curriculum.build_prompt(p) + p.canonical_solution for p in problems[:3]]
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="left")
    ids = torch.cat([torch.full((3, 7), tok.pad_token_id), enc["input_ids"]], 1)  # 7 shared padding columns
    am = torch.cat([torch.zeros(3, 7, dtype=torch.long), enc["attention_mask"]], 1)
    assert stepcoder.drop_shared_padding(ids, am)[0].shape == enc["input_ids"].shape
    right = lambda x, v: torch.cat([x, torch.full((3, 5), v)], 1)  # and 5 shared columns on the right
    with torch.no_grad():  # dropped, not computed: outputs 0 there, the rest as computed with them
        trimmed, full = stepcoder.logprobs_and_values(policy, value_head, right(ids, tok.pad_token_id), right(am, 0), 25, 0.8), \
            stepcoder.logprobs_and_values(policy, value_head, right(ids, tok.pad_token_id), right(am, 1), 25, 0.8)
    for a, b in zip(trimmed, full):
        assert a.shape == (3, 25) and not a[:, 20:].any() and torch.allclose(a[:, :20], b[:, :20], atol=1e-5)
    assert len(set(am.sum(1).tolist())) > 1  # rows of different lengths: some keep padding of their own
    policy.eval()
    with torch.no_grad():
        batch = stepcoder.logprobs_and_values(policy, value_head, ids, am, 20, 0.8)
        resp, _ = stepcoder.generate(policy, tok, ids, am, 8, 0.0, 1.0, 3, "test")
        for row, text in enumerate(texts):
            alone = tok([text], return_tensors="pt")
            for a, b in zip(stepcoder.logprobs_and_values(policy, value_head, alone["input_ids"], alone["attention_mask"], 20, 0.8), batch):
                assert torch.allclose(a[0], b[row], atol=1e-5)
            resp_alone, _ = stepcoder.generate(policy, tok, alone["input_ids"], alone["attention_mask"], 8, 0.0, 1.0, 1, "test")
            assert resp_alone[0].tolist() == resp[row, :resp_alone.shape[1]].tolist()


def decode_setup(tmp_path):
    problems = stepcoder.curriculum.load_problems(write_problems(tmp_path / "p.json"))
    tok, model = models.build_tiny(problems, seed=0)
    model.eval()
    enc = tok([stepcoder.curriculum.build_prompt(p) for p in problems[:4]], return_tensors="pt", padding=True, padding_side="left")
    return tok, model, enc["input_ids"], enc["attention_mask"]


def transformers_generate(model, ids, attention_mask, n_new, eos, pad, **sampling):
    out = model.generate(input_ids=ids, attention_mask=attention_mask, max_new_tokens=n_new, eos_token_id=eos, pad_token_id=pad,
                         cache_implementation="static", disable_compile=True, **sampling)
    return out[:, ids.shape[1]:]


def test_decode_lets_finished_rows_leave_and_matches_greedy_generate(tmp_path):
    # `decode` drops a row (and its KV cache rows) once it wrote EOS; transformers' `generate` keeps
    # computing it. Greedy, the other rows must continue exactly as there, and a finished row hold
    # padding after its EOS. EOS here: a token the random model writes early in some rows, so rows
    # finish at different steps (fails if the cache keeps the dropped rows). A random model's greedy
    # tokens hardly depend on positions: a wrong one fails the trained stand-in's test in test_real_model.
    tok, model, ids, attention_mask = decode_setup(tmp_path)
    free = models.decode(model, tok, ids, attention_mask, 24, 0.0, 1.0)          # (4, 24): no EOS written
    first_at = lambda token: [row.index(token) if token in row else None for row in free.tolist()]
    eos = next(token for token in free.flatten().tolist() if len(set(first_at(token))) >= 2)  # rows end at other steps
    stop_at = first_at(eos)
    fake_tok = SimpleNamespace(eos_token_id=eos, pad_token_id=tok.pad_token_id, chat_template=None)
    ours = models.decode(model, fake_tok, ids, attention_mask, 24, 0.0, 1.0)
    theirs = transformers_generate(model, ids, attention_mask, 24, eos, tok.pad_token_id, do_sample=False)
    assert ours.tolist() == theirs.tolist()
    for row, k in enumerate(stop_at):
        if k is not None:
            assert ours[row, k] == eos and (ours[row, k + 1:] == tok.pad_token_id).all()


def test_decode_samples_as_transformers_does(tmp_path):
    # Temperature and nucleus (top-p) sampling as transformers' warpers: with the same seed and no row
    # finishing, the same tokens (fails if the nucleus keeps one token more or less, or T is not applied).
    tok, model, ids, attention_mask = decode_setup(tmp_path)
    for temperature, top_p in ((0.7, 0.9), (1.3, 0.5), (0.5, 1.0)):
        torch.manual_seed(0)
        ours = models.decode(model, tok, ids, attention_mask, 12, temperature, top_p)
        torch.manual_seed(0)
        theirs = transformers_generate(model, ids, attention_mask, 12, tok.eos_token_id, tok.pad_token_id,
                                       do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        assert tok.eos_token_id not in ours.tolist()[0]
        assert ours.tolist() == theirs.tolist(), (temperature, top_p)


def test_the_nucleus_is_the_smallest_set_reaching_top_p():
    # probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.75 keeps the first two (0.5 + 0.3 reaches it), 0.9 three
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    for top_p, allowed in ((0.75, {0, 1}), (0.9, {0, 1, 2}), (0.4, {0}), (1.0, {0, 1, 2, 3})):
        torch.manual_seed(0)
        drawn = {models.sample_next(logits.expand(4000, 4), 1.0, top_p)[i].item() for i in range(4000)}
        assert drawn == allowed, (top_p, drawn)
    assert models.sample_next(torch.tensor([[0.1, 2.0, 0.3]]), 0.0, 0.9).item() == 1  # temperature 0: greedy


def test_rows_in_length_groups_give_the_whole_minibatch_results_and_gradient(tmp_path):
    # --rows-per-forward: a minibatch runs in groups of rows sorted by length (left-padded prompts of
    # different lengths, responses right-padded). The log-probs, entropy and values must come back in
    # the minibatch's order, and a loss on them must have the gradient of the one-pass minibatch
    # (fails if the groups' outputs are not put back in order, or a group is dropped).
    problems = stepcoder.curriculum.load_problems(write_problems(tmp_path / "p.json"))
    tok, model = models.build_tiny(problems, seed=0)
    policy, value_head = models.add_adapter(model, stepcoder.Config(model="tiny", lora_r=4))
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    prompts = tok([stepcoder.curriculum.build_prompt(p) for p in problems[:5]], return_tensors="pt", padding=True, padding_side="left")
    G = 12
    responses = torch.randint(2, len(tok), (5, G), generator=torch.Generator().manual_seed(0))   # (B, G)
    response_mask = (torch.arange(G)[None] < torch.tensor([12, 3, 7, 1, 9])[:, None]).long()     # (B, G)
    ids = torch.cat([prompts["input_ids"], responses], 1)
    attn = torch.cat([prompts["attention_mask"], response_mask], 1)
    assert len(set(attn.sum(1).tolist())) == 5  # every row another length: the groups reorder them
    weights = torch.rand(5, G, generator=torch.Generator().manual_seed(1)) * response_mask      # (B, G)
    def outputs_and_gradient(rows_per_forward):
        policy.zero_grad()
        value_head.zero_grad()
        outputs = stepcoder.forward_rows(policy, value_head, ids, attn, G, stepcoder.Config(rows_per_forward=rows_per_forward))
        ((outputs[0] + outputs[2]) * weights).sum().backward()
        grads = [p.grad.clone() for p in [*policy.parameters(), *value_head.parameters()] if p.grad is not None]
        return [x.detach() * response_mask for x in outputs], grads
    whole, whole_grads = outputs_and_gradient(0)
    for rows_per_forward in (1, 2):
        grouped, grouped_grads = outputs_and_gradient(rows_per_forward)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(whole, grouped))
        assert len(grouped_grads) == len(whole_grads) > 0
        assert all((a - b).norm() <= 1e-4 * a.norm() for a, b in zip(whole_grads, grouped_grads))  # float rounding



def test_the_warm_start_encodes_rl_prompts_and_cuts_a_long_row_in_its_statement(tmp_path, monkeypatch):
    # One prompt path: a warm-start row begins with the ids RL gives the problem's stage-0 prompt (BOS
    # included, for a plain tokenizer that has one), and a row over --max-prompt-tokens + --max-new-tokens
    # loses the end of its statement, never its solution or EOS.
    from tokenizers import processors
    problems = stepcoder.curriculum.load_problems(write_problems(tmp_path / "p.json"))
    long = dataclasses.replace(problems[0], question="Read an integer n. " + "Think about it. " * 80)
    tok, model = models.build_tiny(problems, seed=0)
    tok.add_special_tokens({"bos_token": "<bos>"})
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tok.bos_token_id)])
    cfg = stepcoder.Config(model="tiny", sft_steps=1, sft_batch_size=1, max_prompt_tokens=200, max_new_tokens=20)
    seen = {}
    def record(model, input_ids, attention_mask, labels, rows_per_forward, scaler=None):
        seen.update(ids=input_ids[0].tolist(), labels=labels[0].tolist())
        return torch.zeros(())
    monkeypatch.setattr(models, "sft_backward", record)
    models.warm_start(model, tok, [long], cfg, random.Random(0), "cpu", tmp_path / "sft.pt")
    prompt, shortened = stepcoder.fit_prompt(tok, long, "", cfg.max_prompt_tokens)
    rl_ids = stepcoder.tokenize_prompts(tok, [prompt], "cpu")[0][0].tolist()
    assert seen["ids"][0] == tok.bos_token_id and rl_ids[0] == tok.bos_token_id
    solution = tok(long.canonical_solution + tok.eos_token, add_special_tokens=False)["input_ids"]
    assert seen["ids"][-len(solution):] == solution and seen["ids"][-1] == tok.eos_token_id  # all of it
    n_prompt = seen["labels"].count(-100)
    assert seen["labels"][n_prompt:] == seen["ids"][n_prompt:]  # the loss is on the solution alone
    assert len(seen["ids"]) <= cfg.max_prompt_tokens + cfg.max_new_tokens + 1 and shortened
    assert tok.decode(seen["ids"][:n_prompt], skip_special_tokens=True).endswith("...\n\n### Python solution:\n")

def test_the_warm_start_gradient_is_the_batch_mean_in_length_groups(tmp_path):
    # The warm start's rows run --rows-per-forward at a time; each group's mean loss is weighted by its
    # share of the target tokens, so loss and gradient are the whole batch's (fails without the weights).
    problems = stepcoder.curriculum.load_problems(write_problems(tmp_path / "p.json"))
    tok, model = models.build_tiny(problems, seed=0)
    texts = [stepcoder.curriculum.build_prompt(p) + p.canonical_solution + tok.eos_token for p in problems[:5]]
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)          # (B, T)
    labels[:, :20] = -100  # the "prompt"
    labels[2] = -100  # a row without targets (its prompt cut by max_length)
    def loss_and_gradient(rows_per_forward):
        model.zero_grad()
        loss = models.sft_backward(model, enc["input_ids"], enc["attention_mask"], labels, rows_per_forward)
        return loss, [p.grad.clone() for p in model.parameters()]
    whole_loss, whole_grads = loss_and_gradient(0)
    assert torch.isclose(whole_loss, model(**enc, labels=labels).loss.detach(), atol=1e-6)
    for rows_per_forward in (1, 2):
        loss, grads = loss_and_gradient(rows_per_forward)
        assert torch.isclose(loss, whole_loss, atol=1e-6)
        assert all((a - b).norm() <= 1e-4 * a.norm() for a, b in zip(whole_grads, grads))  # float rounding


def test_adapters_change_and_base_weights_do_not(tmp_path):
    cfg = stepcoder.parse_config(tiny_args(tmp_path, "--steps", "2", "--lr", "1e-2"))
    _, policy, value_head = stepcoder.train(cfg)
    from transformers import AutoModelForCausalLM
    saved_base = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "base").state_dict()
    base_now = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                for k, v in policy.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(saved_base[k], v) for k, v in base_now.items() if k in saved_base)
    assert len([k for k in base_now if k in saved_base]) >= len(saved_base) - 1  # every base weight compared
    lora_b = [v for k, v in policy.state_dict().items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # LoRA B starts at zero


def test_4bit_tiny_path_loads_and_trains(tmp_path):
    cfg = stepcoder.parse_config(tiny_args(tmp_path, "--steps", "1", "--quantize", "nf4"))
    run_dir, policy, _ = stepcoder.train(cfg)
    import bitsandbytes as bnb
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in policy.modules())
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1


def test_cli_smoke_two_steps_writes_metrics_and_a_loadable_adapter(tmp_path):
    proc = run_cli(tiny_args(tmp_path, "--steps", "2", "--eval"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward_mean", "pass_rate", "frac_compile_error", "kl", "approx_kl", "clipfrac", "entropy",
                "pg_loss", "vf_loss", "explained_var", "stage_hist", "fgo_kept", "gen_tokens_per_s",
                "t_generate", "t_score", "t_update"):
        assert key in rows[-1]
    for row in rows:  # the mean reward is Eq. 3's over the step's verdicts
        fractions = {v: row[f"frac_{v}"] for v in stepcoder.sandbox.REWARDS}
        assert sum(fractions.values()) == pytest.approx(1.0)
        assert row["reward_mean"] == pytest.approx(sum(f * stepcoder.sandbox.REWARDS[v] for v, f in fractions.items()))
    assert "step 2 | reward" in proc.stdout + proc.stderr  # the greppable line
    assert "pass@1 at stage 0, step0 -> step2:" in proc.stdout  # the summary at the end
    assert (run / "curves.png").stat().st_size > 1000  # the run's curves (matplotlib: requirements-dev)
    page = (run / "rollouts.html").read_text()  # the rollouts page: both steps, after the last evaluation
    assert "<summary>step 2 of 2:" in page and "step0 -&gt; step2" in page and page.rstrip().endswith("</html>")
    assert f"rollouts page: {run / 'rollouts.html'}" in proc.stdout
    assert json.loads((run / "eval_step2.json").read_text())["train"]["overall"]["n"] == 12
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(run / "base"), run / "checkpoint" / "adapter")
    assert any("lora_A" in name for name, _ in model.named_parameters())


@pytest.mark.parametrize("sampled", [False, True])
def test_held_out_problems_are_evaluated_greedily_and_training_problems_also_sampled(tmp_path, monkeypatch, sampled):
    # the test set gets one greedy decode per problem (held-out problems are not what RL optimises), and
    # with --eval-test-sampled also --eval-samples samples each, its pass@1 theirs; the train set always
    # gets both (fails if either set is evaluated otherwise, or the flag is ignored)
    calls, generate = [], stepcoder.generate
    def counting(policy, tok, ids, am, n_new, temperature, *args):
        calls.append((args[-1], temperature, len(ids)))
        return generate(policy, tok, ids, am, n_new, temperature, *args)
    monkeypatch.setattr(stepcoder, "generate", counting)
    def every_third_passes(programs, problems, cfg):  # so that the problems' pass rates differ
        return [SimpleNamespace(status="pass" if i % 3 == 0 else "compile_error", reward=1.0 if i % 3 == 0 else -1.0)
                for i in range(len(programs))]
    monkeypatch.setattr(stepcoder, "sandbox_results", every_third_passes)
    test_data = write_problems(tmp_path / "held_out.json", n=2)
    flags = ["--eval-test-sampled"] * sampled
    stepcoder.train(stepcoder.parse_config(tiny_args(tmp_path, "--steps", "0", "--eval", "--test-data", str(test_data), *flags)))
    evals = {(desc, t, n) for desc, t, n in calls if desc.startswith("eval")}
    assert evals == {("eval step 0, train, greedy", 0.0, 12), ("eval step 0, train, pass@1", 0.5, 24),
                     ("eval step 0, test, greedy", 0.0, 4), *[("eval step 0, test, pass@1", 0.5, 8)] * sampled}
    report = json.loads((tmp_path / "run" / "eval_step0.json").read_text())
    held_out = report["test"]["overall"]  # 4 problems: greedy 2 of 4 pass (i = 0, 3), samples 3 of 8 (i = 0, 3, 6)
    assert held_out["n"] == 4 and held_out["greedy"] == pytest.approx(2 / 4)
    assert held_out["pass@1"] == pytest.approx(3 / 8 if sampled else held_out["greedy"])
    # each problem's pass rates: as many as the problems, and their mean is the overall rate
    problems = report["train"]["problems"]
    assert set(problems) == {str(p["problem_id"]) for p in json.loads((tmp_path / "probs.json").read_text())}
    for key in ("greedy", "pass@1"):
        assert sum(p[key] for p in problems.values()) / len(problems) == pytest.approx(report["train"]["overall"][key])
        assert 0 < report["train"]["overall"][key] < 1 and all(0 <= p[key] <= 1 for p in problems.values())


def test_resume_takes_eval_test_sampled(tmp_path):
    # a run started without the flag is evaluated with it when resumed with it (bench/ablations.py --test-sampled)
    (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(stepcoder.parse_config(tiny_args(tmp_path)))))
    assert not stepcoder.parse_config(["--resume", str(tmp_path)]).eval_test_sampled
    assert stepcoder.parse_config(["--resume", str(tmp_path), "--eval-test-sampled"]).eval_test_sampled


@pytest.mark.parametrize("extra, needle", [
    (["--steps", "-1"], "--steps"),
    (["--top-p", "1.5"], "--top-p"),
    (["--data", "no/such/file.json"], "no/such/file.json"),
    (["--bogus-flag"], "--bogus-flag"),
    (["--model", "./no-such-model-dir"], "no-such-model-dir"),
])
def test_bad_flags_fail_with_one_line_and_exit_2(tmp_path, extra, needle):
    args = tiny_args(tmp_path) + extra
    if "--model" in extra:
        args = [a for a in args if a != "tiny"]
        args.remove("--model")
    proc = run_cli(args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing written



def test_tensorboard_without_the_package_stops_before_anything_is_written(tmp_path, monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real_find_spec(name, *a))
    assert stepcoder.main(tiny_args(tmp_path, "--tensorboard")) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "pip install tensorboard" in lines[0]
    assert not (tmp_path / "run").exists()  # the same command works once the package is installed

def test_bad_data_fails_with_one_line_naming_the_record(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"problem_id": 1, "question": "q", "canonical_solution": "print(1)\n",
                                "fn_name": None, "inputs": ["1\n"], "outputs": [], "difficulty": "introductory"}]))
    proc = run_cli(["--model", "tiny", "--data", str(bad), "--out", str(tmp_path / "run")])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.json" in lines[0] and "Traceback" not in proc.stderr


def test_existing_run_directory_is_never_overwritten(tmp_path):
    (tmp_path / "run").mkdir()
    keep = tmp_path / "run" / "metrics.jsonl"
    keep.write_text("precious\n")
    proc = run_cli(tiny_args(tmp_path, "--steps", "1"))
    assert proc.returncode == 2 and "--resume" in proc.stderr and "--overwrite" in proc.stderr
    assert keep.read_text() == "precious\n"


def test_cccs_prompt_tokenizes_as_the_warm_start_saw_it():
    # The prompt of a CCCS subtask must be a token-prefix of the prompt + canonical solution the
    # warm start trained on; a prefix ending in "\n" is not (BPE merges "\n" with the indentation).
    import curriculum
    problems = curriculum.load_problems(ROOT / "data" / "train.json")
    tok, _ = models.build_tiny(problems, seed=0)
    good = bad = 0
    for p in problems:
        prompt = curriculum.build_prompt(p, tok)
        full = tok(prompt + p.canonical_solution)["input_ids"]
        for pre in filter(str.strip, curriculum.stage_prefixes(p.canonical_solution)):
            ids = tok(prompt + stepcoder.prompt_prefix(pre))["input_ids"]
            assert full[:len(ids)] == ids, (p.problem_id, pre[-30:])
            good += 1
            raw = tok(prompt + pre)["input_ids"]
            bad += full[:len(raw)] != raw
    assert good > 50 and bad > good // 2  # the raw prefixes would have broken most prompts



@pytest.mark.parametrize("verdict", ["pass", "wrong_answer"])
def test_the_loop_moves_the_problems_whose_rollouts_pass_and_no_others(tmp_path, monkeypatch, verdict):
    # The sandbox's verdicts reach the curriculum: with a threshold one pass exceeds, every problem the step
    # drew moves from stage 1 to 0 when its rollouts pass, none when they fail; the undrawn never move.
    drawn = []
    def sandbox_results(programs, problems, cfg):
        drawn.extend(p.problem_id for p in problems)
        return [stepcoder.sandbox.ExecResult(verdict, 1, 1, stepcoder.sandbox.REWARDS[verdict]) for _ in programs]
    monkeypatch.setattr(stepcoder, "sandbox_results", sandbox_results)
    run, _, _ = stepcoder.train(stepcoder.parse_config(tiny_args(
        tmp_path, "--steps", "1", "--no-eval", "--cccs-threshold", "0.2", "--cccs-plain-fraction", "0")))
    state = json.loads((run / "checkpoint" / "progress.json").read_text())["curriculum"]
    stages = {pid: stage for pid, stage, *_ in state["problems"]}
    assert len(set(drawn)) == 3 and len(stages) == 12
    assert {pid: stage for pid, stage in stages.items() if pid not in drawn} == {pid: 1 for pid in stages if pid not in drawn}
    assert {stages[pid] for pid in drawn} == ({0} if verdict == "pass" else {1})


def test_rollouts_the_sandbox_failed_on_are_out_of_the_loss_the_curriculum_and_the_reward(tmp_path, monkeypatch, capsys):
    # Each drawn problem's first rollout passes, its second is a sandbox_error (reward NaN, as the sandbox gives):
    # the curriculum records the pass alone (rho = alpha, not alpha * (1 - alpha) as after a failure), no loss
    # turns NaN (no minibatch skipped), reward_mean is the judged rollouts' (1.0), and the step line says so.
    def sandbox_results(programs, problems, cfg):
        return [sandbox.ExecResult("pass", 1, 1, 1.0) if i % 2 == 0 else
                sandbox.ExecResult(sandbox.SANDBOX_ERROR, 0, 1, math.nan, error="sandbox worker died")
                for i in range(len(programs))]
    monkeypatch.setattr(stepcoder, "sandbox_results", sandbox_results)
    run, _, _ = stepcoder.train(stepcoder.parse_config(tiny_args(
        tmp_path, "--steps", "1", "--no-eval", "--cccs-threshold", "0.99", "--cccs-plain-fraction", "0")))
    state = json.loads((run / "checkpoint" / "progress.json").read_text())["curriculum"]
    rhos = {rho for _, _, rho, *_ in state["problems"] if rho}
    metrics = json.loads((run / "metrics.jsonl").read_text())
    assert rhos == {state["alpha"]}
    assert metrics["frac_sandbox_error"] == 0.5 and metrics["frac_pass"] == 0.5 and metrics["reward_mean"] == 1.0
    assert metrics["skipped_updates"] == 0 and all(math.isfinite(metrics[k]) for k in ("pg_loss", "vf_loss", "fgo_kept"))
    assert "| sandbox_error 0.500" in capsys.readouterr().out


def test_a_sandbox_error_row_has_no_action_in_either_mask():
    G = 4
    rollouts = SimpleNamespace(programs=["x = 1\n"] * 2, prefixes=[""] * 2, n_gen=G, lengths=torch.tensor([3, 3]),
                               ids=torch.zeros(2, G, dtype=torch.long), token_ends=[[2, 4, 6]] * 2)
    results = [sandbox.ExecResult("pass", 1, 1, 1.0, frozenset({1}), coverage_complete=True),
               sandbox.ExecResult(sandbox.SANDBOX_ERROR, 0, 1, math.nan)]
    for fgo in (True, False):
        b_mask, b_fgo = stepcoder.action_masks(rollouts, results, SimpleNamespace(eos_token_id=0), fgo)
        assert b_mask.tolist() == [[1, 1, 1, 0], [0] * G] and b_fgo.tolist() == [[1, 1, 1, 0], [0] * G]


def test_sft_data_warm_starts_on_other_problems_than_rls(tmp_path, monkeypatch):
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{**record, "problem_id": f"sft-{record['problem_id']}"}
                                 for record in json.loads(write_problems(tmp_path / "o.json").read_text())]))
    warm_started = []
    monkeypatch.setattr(models, "warm_start", lambda model, tok, problems, *args: warm_started.extend(p.problem_id for p in problems))
    run, _, _ = stepcoder.train(stepcoder.parse_config(tiny_args(tmp_path, "--steps", "0", "--no-eval", "--sft-data", str(other))))
    assert warm_started and all(str(pid).startswith("sft-") for pid in warm_started)
    state = json.loads((run / "checkpoint" / "progress.json").read_text())["curriculum"]
    assert not any(str(pid).startswith("sft-") for pid, *_ in state["problems"])  # RL's problems: --data

def test_show_rollout_marks_prefix_lines_and_masked_tokens():
    from types import SimpleNamespace
    result = SimpleNamespace(status="pass", reward=1.0, executed_lines=frozenset({1, 2}))
    text = runs.show_rollout(SimpleNamespace(problem_id=7), 1, stepcoder.prompt_prefix("a = 1\nb = 2\n"),
                                  ["\nif a:", "\n    b = 3"], [1.0, 0.0], result)
    body = text.splitlines()[2:]
    # the prefix's two lines are prompt ('|'); the policy wrote the line break after line 2
    assert body == ["   1 | a = 1", "   2 | b = 2", "   3 + if a:⟦", "   4 +     b = 3⟧"]


def test_a_run_from_its_saved_base_repeats_the_run(tmp_path):
    # `--model RUN/base` loads the warm-started tiny model like any local model; with the same
    # settings the RL phase must repeat exactly (bench/ablations.py relies on this).
    from dataclasses import asdict
    cfg = stepcoder.parse_config(tiny_args(tmp_path, "--steps", "2"))
    run1, _, _ = stepcoder.train(cfg)
    argv = ["--model", str(run1 / "base"), "--out", str(tmp_path / "run2")]
    for k, v in asdict(cfg).items():
        if k not in ("model", "out", "resume", "overwrite", "sft_steps", "sft_lr") and v is not False:
            argv += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    run2, _, _ = stepcoder.train(stepcoder.parse_config(argv))
    rows = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (run1, run2)]
    for key in ("reward_mean", "kl", "pg_loss", "entropy"):
        assert [r[key] for r in rows[0]] == pytest.approx([r[key] for r in rows[1]], abs=1e-6), key


def load_ablations():
    import importlib.util
    spec = importlib.util.spec_from_file_location("ablations", ROOT / "bench" / "ablations.py")
    ablations = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablations)
    return ablations


def ablation_bench_refusal(monkeypatch, capsys) -> list[str]:
    """Run bench/ablations.py's main (sys.argv set by the caller), which must stop with exit code 2
    before training anything; -> its stderr lines."""
    ablations = load_ablations()
    def train(cfg):
        raise AssertionError("the bench went on to train")
    monkeypatch.setattr(ablations.stepcoder, "train", train)
    assert ablations.main() == 2
    return capsys.readouterr().err.strip().splitlines()


def test_the_ablation_bench_keeps_earlier_runs_unless_told(tmp_path, monkeypatch, capsys):
    # A second bench with the same --out (say, another setting) must not delete the first one's runs:
    # one line, exit 2, nothing touched (fails if the bench deletes OUT without --overwrite).
    finished = tmp_path / "out" / "stepcoder-seed0" / "eval_step30.json"
    finished.parent.mkdir(parents=True)
    finished.write_text("{}")
    monkeypatch.setattr("sys.argv", ["ablations.py", "--settings", "no-cccs", "--out", str(tmp_path / "out")])
    error = ablation_bench_refusal(monkeypatch, capsys)
    assert len(error) == 1 and "--continue" in error[0] and "--overwrite" in error[0]
    assert finished.read_text() == "{}"


def test_the_ablation_bench_refuses_test_sampled_on_a_warm_start_evaluated_greedily(tmp_path, monkeypatch, capsys):
    # --test-sampled needs the warm start's held-out pass@1 from samples too: a kept OUT/sft evaluated
    # greedily only is refused in one line, exit 2, before any run (fails if it trains on, comparing
    # sampled runs against a greedy warm start)
    sft = tmp_path / "out" / "sft"
    sft.mkdir(parents=True)
    greedy_only = {"overall": {"pass@1": 0.5, "greedy": 0.5, "n": 2}, "problems": {"1": {"greedy": 1.0}, "2": {"greedy": 0.0}}}
    (sft / "eval_step0.json").write_text(json.dumps({"train": greedy_only, "test": greedy_only}))
    monkeypatch.setattr("sys.argv", ["ablations.py", "--continue", "--test-sampled", "--out", str(tmp_path / "out")])
    error = ablation_bench_refusal(monkeypatch, capsys)
    assert len(error) == 1 and "--test-sampled" in error[0]


def test_the_ablation_bench_reports_pass_at_8_from_finished_runs(tmp_path, monkeypatch):
    # --continue on a finished warm start and run only aggregates: pass@8 is the share of problems any
    # of the 8 samples solves (train: 2/4 -> 3/4; held-out: 1/2 -> 0/2), beside pass@1 (fails if it
    # counts samples, or a problem no sample solves, or the bench trains again)
    ablations = load_ablations()
    def report(rates: dict) -> dict:
        problems = {pid: {"pass@1": rate, "greedy": 0.0} for pid, rate in rates.items()}
        return {"overall": {"pass@1": sum(rates.values()) / len(rates), "greedy": 0.0, "reward": 0.0}, "problems": problems}
    out, run = tmp_path / "out", tmp_path / "out" / "stepcoder-seed0"
    run.mkdir(parents=True)
    (out / "sft").mkdir()
    warm = {"train": report({"1": 0.0, "2": 0.125, "3": 1.0, "4": 0.0}), "test": report({"5": 0.5, "6": 0.0})}
    (out / "sft" / "eval_step0.json").write_text(json.dumps(warm))
    after = {"train": report({"1": 0.25, "2": 0.0, "3": 1.0, "4": 0.5}), "test": report({"5": 0.0, "6": 0.0})}
    (run / "eval_step2.json").write_text(json.dumps(after))
    step = {"reward_mean": 0.1, "pass_rate": 0.5, "reward_stage0": None, "stage_hist": {"1": 4}}
    (run / "metrics.jsonl").write_text(json.dumps(step) + "\n" + json.dumps(step) + "\n")
    monkeypatch.setattr("sys.argv", ["ablations.py", "--continue", "--seeds", "0", "--settings", "stepcoder", "--steps", "2",
                                     "--test-sampled", "--out", str(out), "--png", str(tmp_path / "curves.png")])
    def train(cfg):
        raise AssertionError("the bench trained a finished run again")
    monkeypatch.setattr(ablations.stepcoder, "train", train)
    assert ablations.main() == 0
    (row,) = json.loads((out / "results.json").read_text())["StepCoder (CCCS + FGO)"]
    assert (row["pass8_before"], row["pass8_after"]) == (0.5, 0.75)
    assert (row["test_pass8_before"], row["test_pass8_after"]) == (0.5, 0.0)
    assert (row["test_before"], row["test_after"]) == (0.25, 0.0)


def test_the_ablation_bench_passes_tinys_defaults_as_flags_that_parse_back():
    # bench/ablations.py gives each run tiny's defaults as flags (its base is a local directory);
    # fails if a False default is written as "--flag False" (UsageError) or a value is lost
    ablations = load_ablations()
    from support.config import TINY_DEFAULTS
    cfg = stepcoder.parse_config(["--model", "deepseek-coder-1.3b", *ablations.tiny_flags(7)])
    for key, value in TINY_DEFAULTS.items():
        if key not in ("sft_steps", "sft_lr", "eval"):
            assert getattr(cfg, key) == (7 if key == "steps" else value), key


def test_evaluation_does_not_change_the_training_run(tmp_path):
    # --eval samples programs (tiny: at T = 0.5; 2 per problem here) with its own seeded RNG, so a run
    # trains exactly as it would without it (fails if evaluation draws from the training RNG)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    cfg = stepcoder.parse_config(tiny_args(tmp_path / "a", "--steps", "2"))
    assert cfg.eval and cfg.eval_temperature > 0 and cfg.eval_samples == 2
    run_a, _, _ = stepcoder.train(cfg)
    run_b, _, _ = stepcoder.train(stepcoder.parse_config(tiny_args(tmp_path / "b", "--steps", "2", "--no-eval")))
    rows = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (run_a, run_b)]
    for key in ("reward_mean", "kl", "pg_loss"):
        assert [r[key] for r in rows[0]] == pytest.approx([r[key] for r in rows[1]], abs=1e-6), key
    assert not (run_b / "eval_step0.json").exists()
    report = json.loads((run_a / "eval_step2.json").read_text())["train"]["overall"]
    assert set(report) == {"pass@1", "reward", "greedy", "n", "pass@k", "ci95", "samples"} and report["n"] == 12
    assert report["pass@k"]["1"] == pytest.approx(report["pass@1"]) and report["pass@k"]["2"] >= report["pass@1"]
    assert report["pass@1"] * 24 == pytest.approx(round(report["pass@1"] * 24))  # 2 samples x 12 problems
    # the mean Eq. 3 reward of the same 24 samples: a pass is +1, any failure between -1 and -0.3
    assert 2 * report["pass@1"] - 1 - 1e-9 <= report["reward"] <= 1.3 * report["pass@1"] - 0.3 + 1e-9


def test_the_warm_start_depends_on_sft_seed_not_on_seed(tmp_path):
    # RL seeds start from one warm-started model (as the paper's runs start from one SFT model); the
    # warm start's own seed is --sft-seed. Fails if the tiny model or its SFT batches follow --seed.
    from safetensors.torch import load_file
    weights = {}
    for seed, sft_seed in ((1, 0), (2, 0), (1, 1)):
        d = tmp_path / f"{seed}-{sft_seed}"
        d.mkdir()
        args = tiny_args(d, "--steps", "0", "--no-eval", "--seed", str(seed), "--sft-seed", str(sft_seed))
        run, _, _ = stepcoder.train(stepcoder.parse_config(args))  # the last --seed counts
        weights[seed, sft_seed] = load_file(run / "base" / "model.safetensors")
    same, other = weights[1, 0], weights[1, 1]
    assert all(torch.equal(same[k], weights[2, 0][k]) for k in same)
    assert not all(torch.equal(same[k], other[k]) for k in same)
