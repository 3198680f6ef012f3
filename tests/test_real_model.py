"""The path of a pretrained instruct model (`--model DIR` or a hub id), through a local stand-in of
DeepSeek-Coder-Instruct (conftest.build_deepseek_standin: its chat template and special tokens, a small
Llama), and the trainer's typical wrong answers, each caught by a fast test here."""
import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch

import curriculum
import sandbox
from support import models, runs
import stepcoder
from conftest import BOS, DEEPSEEK_SYSTEM_LINE, EOT, ROOT, run_cli, write_problems


def load_standin(directory: Path, **flags):
    cfg = stepcoder.Config(model=str(directory), **flags)
    return cfg, *models.load_base(str(directory), cfg, torch.device("cpu"))


def tiny_policy(problems, lora_b_scale: float = 0.05):
    """The tiny model with a non-trivial adapter (LoRA's B starts at zero), as after some updates."""
    tok, model = models.build_tiny(problems, seed=0)
    policy, value_head = models.add_adapter(model, stepcoder.Config(model="tiny", lora_r=4))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, lora_b_scale)
    return tok, policy, value_head


# ---------------------------------------------------------------- the stand-in's prompt and stop ---

def test_the_prompt_is_deepseeks_template_then_the_fence_then_the_prefix(deepseek_standin, standin_problems):
    _, tok, _ = load_standin(deepseek_standin)
    problem = curriculum.load_problems(standin_problems)[0]
    prefix = stepcoder.prompt_prefix(curriculum.stage_prefixes(problem.canonical_solution)[0])
    text, shortened = stepcoder.fit_prompt(tok, problem, prefix, 512)
    assert not shortened and prefix == "n = int(input())"
    assert text.startswith(BOS + DEEPSEEK_SYSTEM_LINE)
    assert f"\n### Instruction:\nwrite an algorithm in python:\n{problem.question}\n" in text
    assert text.endswith("\n### Response:\n```python\n" + prefix)
    ids, _ = stepcoder.tokenize_prompts(tok, [text], "cpu")
    assert ids[0].tolist().count(tok.bos_token_id) == 1 and ids[0, 0] == tok.bos_token_id  # the template's BOS only
    assert tok.eos_token == EOT and tok.pad_token_id not in (tok.eos_token_id, tok.bos_token_id)


def test_generation_stops_at_the_closing_fence_and_the_mask_ends_at_the_program(deepseek_standin, standin_problems):
    cfg, tok, base = load_standin(deepseek_standin)
    problems = curriculum.load_problems(standin_problems)
    prompts = [stepcoder.fit_prompt(tok, p, "", 512)[0] for p in problems]
    ids, mask = stepcoder.tokenize_prompts(tok, prompts, "cpu")
    policy, _ = models.add_adapter(base, cfg)
    resp, lengths = stepcoder.generate(policy, tok, ids, mask, 200, 0.0, 1.0, 4, "test")
    assert resp.shape[1] < 100  # stopped long before max_new_tokens
    for row, n, problem in zip(resp.tolist(), lengths.tolist(), problems):
        program = tok.decode(row[:n], skip_special_tokens=True)
        rest = tok.decode([t for t in row[n:] if t != tok.pad_token_id], skip_special_tokens=False)
        assert program == problem.canonical_solution  # the stand-in learnt its four programs
        assert rest == "```"  # the fence closes the response: nothing is generated after it
        assert stepcoder.program_text(tok, row) == program


def test_response_length_ends_at_the_programs_last_token():
    class Tok:  # one character per token; "```" and "\n```" as single tokens, as BPE may merge them
        chat_template, eos_token_id = "x", 99
        pieces = {0: "a", 1: "\n", 2: "```", 3: "\n```", 4: "b", 99: ""}
        def decode(self, ids, skip_special_tokens=True):
            return "".join(self.pieces[i] for i in ids)
    tok = Tok()
    assert stepcoder.response_length(tok, [0, 1, 2, 4, 4]) == 2     # "a\n" then the fence: 2 program tokens
    assert stepcoder.response_length(tok, [0, 3, 4]) == 2           # the token "\n```" holds the program's "\n"
    assert stepcoder.response_length(tok, [2, 0]) == 1              # an empty program: the reward lands on the fence
    assert stepcoder.response_length(tok, [0, 0, 99, 0]) == 3       # no fence: up to and including EOS
    assert stepcoder.response_length(tok, [0, 4]) == 2              # neither: all of it
    tok.chat_template = None                                        # not a chat model: EOS alone ends it
    assert stepcoder.response_length(tok, [0, 2, 4, 99, 0]) == 4



def test_a_fence_split_across_tokens_never_enters_the_scored_program():
    class Tok:  # the closing fence split as "\n``" + "`": the token with the program's "\n" holds two backticks
        chat_template, eos_token_id = "x", 99
        pieces = {0: "print(1)", 1: "\n``", 2: "`", 3: "\nprint(2)", 99: ""}
        def decode(self, ids, skip_special_tokens=True):
            return "".join(self.pieces[i] for i in ids)
    tok = Tok()
    response = [0, 1, 2, 3, 99]
    assert stepcoder.response_length(tok, response) == 2  # the actions end with "\n``"
    program = stepcoder.program_text(tok, response)
    assert program == "print(1)\n"
    assert sandbox.run_tests(program, {"inputs": [""], "outputs": ["1\n"], "fn_name": None}).status == "pass"

@pytest.mark.parametrize("flags", [[], ["--quantize", "nf4"], ["--sft-steps", "3"]], ids=["bf-none", "4bit", "sft"])
def test_the_standin_trains_two_steps_through_the_hub_path(deepseek_standin, standin_problems, tmp_path, flags):
    args = ["--model", str(deepseek_standin), "--data", str(standin_problems), "--out", str(tmp_path / "run"),
            "--steps", "2", "--problems-per-step", "2", "--samples-per-problem", "2", "--max-new-tokens", "40",
            "--minibatch-size", "2", "--max-prompt-tokens", "512", *flags]
    run_dir, policy, _ = stepcoder.train(stepcoder.parse_config(args))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["frac_compile_error"] < 1.0  # the programs run: the stand-in closes its fence
    lora_b = [v for k, v in policy.state_dict().items() if "lora_B" in k]
    assert any(v.abs().sum() > 0 for v in lora_b)  # the adapter learnt
    if "nf4" in flags:
        import bitsandbytes as bnb
        assert any(isinstance(m, bnb.nn.Linear4bit) for m in policy.modules())


def test_a_tokenizer_that_loses_whitespace_is_refused_with_one_line(tmp_path):
    # what early transformers 5.x made of DeepSeek-Coder's tokenizer: every space and line break gone
    from tokenizers import Tokenizer, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    bpe = Tokenizer(BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator([models.CODE_SAMPLE] * 3, trainers.BpeTrainer(vocab_size=100, special_tokens=["<unk>", "<eos>"]))
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>").save_pretrained(tmp_path / "model")
    data = write_problems(tmp_path / "p.json")
    proc = run_cli(["--model", str(tmp_path / "model"), "--data", str(data), "--out", str(tmp_path / "run"), "--no-eval"])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr
    assert "transformers" in lines[0] and "pip install" in lines[0]


# ---------------------------------------------------------------- prompts, precision, checkpoints ---

def test_a_long_prompt_loses_the_end_of_its_statement_never_the_prefix(tmp_path):
    problems = curriculum.load_problems(write_problems(tmp_path / "p.json"))
    tok, _ = models.build_tiny(problems, seed=0)
    problem = dataclasses.replace(problems[0], question="Read an integer n. " + "Then think about it. " * 60 + "Print n + 0.")
    prefix = stepcoder.prompt_prefix(curriculum.stage_prefixes(problem.canonical_solution)[0])
    full, shortened = stepcoder.fit_prompt(tok, problem, prefix, 10_000)
    assert not shortened
    limit = curriculum.count_tokens(tok, full) - 40
    text, shortened = stepcoder.fit_prompt(tok, problem, prefix, limit)
    assert shortened and curriculum.count_tokens(tok, text) <= limit
    assert text.endswith("...\n\n### Python solution:\n" + prefix)  # statement cut, header and prefix whole
    assert "Read an integer n. Then think" in text and "Print n + 0." not in text
    ids, _ = stepcoder.tokenize_prompts(tok, [text, full], "cpu")  # tokenizing cuts nothing either
    assert tok.decode(ids[0], skip_special_tokens=True) == text and tok.decode(ids[1], skip_special_tokens=True) == full


def test_tiny_stays_full_precision_on_cuda_and_pretrained_models_go_4bit(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))  # an A100 (float16 before:
    tiny, hub = stepcoder.Config(model="tiny"), stepcoder.Config()                         # tests/test_compute_dtype.py)
    assert models.precision(tiny, "cuda", tiny=True) == (False, torch.float32)
    assert models.precision(tiny, "cpu", tiny=True) == (False, torch.float32)
    assert models.precision(dataclasses.replace(tiny, quantize="nf4"), "cuda", tiny=True)[0]
    assert models.precision(hub, "cuda", tiny=False) == (True, torch.bfloat16)
    assert models.precision(dataclasses.replace(hub, quantize="none"), "cuda", tiny=False) == (False, torch.bfloat16)
    assert models.precision(hub, "cpu", tiny=False) == (False, torch.float32)


def test_a_checkpoint_keeps_and_restores_the_cuda_rng(tmp_path, monkeypatch):
    problems = curriculum.load_problems(write_problems(tmp_path / "p.json"))
    _, policy, value_head = tiny_policy(problems)
    optimizer = torch.optim.AdamW(value_head.parameters())
    cur, rng = curriculum.Curriculum(problems), random.Random(0)
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.tensor([7, 8, 9], dtype=torch.uint8)])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    runs.save_checkpoint(tmp_path, policy, value_head, optimizer, cur, 3, rng)
    assert runs.load_checkpoint(tmp_path / "checkpoint", value_head, optimizer, cur, rng) == 3
    assert len(restored) == 1 and restored[0][0].tolist() == [7, 8, 9]


def test_4bit_lora_gradients_equal_those_of_the_dequantised_float32_model(tmp_path, monkeypatch):
    # Gradients reach the adapters of earlier layers through the frozen 4-bit layers. bitsandbytes
    # repacks 4-bit weights for inference on AVX512-BF16 CPUs into a layout whose kernel (gemv_4bit)
    # has no backward; load_base turns that off (patched on here, as if this CPU had the feature).
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM
    monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda: True)
    problems = curriculum.load_problems(write_problems(tmp_path / "p.json"))
    tok, model = models.build_tiny(problems, seed=0)
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    cfg, tok, quantised = load_standin(tmp_path / "base", quantize="nf4", lora_r=4)
    layers = [m for m in quantised.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
    dequantised = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    modules = dict(quantised.named_modules())
    for name, module in dequantised.named_modules():
        if isinstance(modules.get(name), bnb.nn.Linear4bit):
            q = modules[name].weight
            module.weight.data = bnb.functional.dequantize_4bit(q.data, q.quant_state).float()
    texts = [curriculum.build_prompt(p) + p.canonical_solution for p in problems[:4]]
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="left")
    grads = []
    for model in (quantised, dequantised):
        torch.manual_seed(0)
        policy, value_head = models.add_adapter(model, cfg)
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
        policy.eval()  # as in the trainer: generation and old log-probs first, in eval mode
        with torch.no_grad():
            stepcoder.logprobs_and_values(policy, value_head, enc["input_ids"], enc["attention_mask"], 20, 1.0)
        policy.train()
        logprobs, _, values = stepcoder.logprobs_and_values(policy, value_head, enc["input_ids"], enc["attention_mask"], 20, 1.0)
        (logprobs.sum() + values.sum()).backward()
        grads.append({n: p.grad for n, p in policy.named_parameters() if p.requires_grad})
    first_layer = [n for n in grads[0] if ".layers.0." in n and "lora_A" in n]
    assert first_layer and all(grads[1][n].abs().sum() > 0 for n in first_layer)
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6), name


# ---------------------------------------------------------------- the trainer's typical wrong answers ---

def test_log_probs_are_of_the_token_that_was_generated_at_each_position(tmp_path):
    # forward()'s logprobs[t] must be log p(token P+t | tokens < P+t): the logits one column before it
    problems = curriculum.load_problems(write_problems(tmp_path / "p.json"))
    tok, policy, value_head = tiny_policy(problems)
    ids = tok([curriculum.build_prompt(problems[0]) + problems[0].canonical_solution], return_tensors="pt")["input_ids"]
    G = 12
    with torch.no_grad():
        logprobs, _, _ = stepcoder.logprobs_and_values(policy, value_head, ids, torch.ones_like(ids), G, 0.7)
        logits = policy(input_ids=ids).logits[0].float() / 0.7
    T = ids.shape[1]
    by_hand = [torch.log_softmax(logits[t - 1], -1)[ids[0, t]] for t in range(T - G, T)]
    assert torch.allclose(logprobs[0], torch.stack(by_hand), atol=1e-5)


def test_the_value_of_a_token_is_read_before_it(tmp_path):
    # V(s_t) is the value of the state *before* token t: it must not change when token t changes, while the
    # value after it (column t+1) must. Read at the token itself, column t would see the token it scores.
    problems = curriculum.load_problems(write_problems(tmp_path / "p.json"))
    tok, policy, value_head = tiny_policy(problems)
    torch.manual_seed(0)
    with torch.no_grad():
        value_head.weight.normal_(0, 1.0)  # the adapter's value head starts at zero: any reading gives 0
    ids = tok([curriculum.build_prompt(problems[0]) + problems[0].canonical_solution], return_tensors="pt")["input_ids"]
    G, j = 12, 5
    changed = ids.clone()
    changed[0, ids.shape[1] - G + j] = (ids[0, ids.shape[1] - G + j] + 1) % len(tok)  # generated token j changes
    with torch.no_grad():
        logprobs, _, values = stepcoder.logprobs_and_values(policy, value_head, ids, torch.ones_like(ids), G, 0.7)
        logprobs2, _, values2 = stepcoder.logprobs_and_values(policy, value_head, changed, torch.ones_like(ids), G, 0.7)
    assert torch.allclose(values[0, :j + 1], values2[0, :j + 1], atol=1e-6), "V(s_t) must not see token t"
    assert (values[0, j + 1] - values2[0, j + 1]).abs() > 1e-4, "the value after token t must see it"
    assert torch.allclose(logprobs[0, :j], logprobs2[0, :j], atol=1e-6)
    assert (logprobs[0, j] - logprobs2[0, j]).abs() > 1e-4, "log p(token t) is of the token that is there"


def test_advantages_are_whitened_over_the_actions_only(tmp_path):
    # compute_advantages whitens over b_mask: over the actions the advantages have mean 0 and std 1, and
    # the padding after each response is 0. Whitened over the padding too, the actions' mean is not 0.
    problems = curriculum.load_problems(write_problems(tmp_path / "p.json"))
    tok, policy, value_head = tiny_policy(problems)
    with torch.no_grad():
        value_head.weight.normal_(0, 0.1)
    enc = tok([curriculum.build_prompt(p) + p.canonical_solution for p in problems[:4]], return_tensors="pt",
              padding=True, padding_side="left")
    G = 16
    lengths = torch.tensor([3, 16, 9, 1])  # the actions of each row; the rest of its G columns is padding
    b_mask = (torch.arange(G)[None] < lengths[:, None]).float()                      # (N, G)
    attention_mask = torch.cat([enc["attention_mask"][:, :-G], b_mask.long()], 1)
    rollouts = stepcoder.Rollouts(problems=problems[:4], stages=[0] * 4, prefixes=[""] * 4, prompts_shortened=0,
                                  ids=enc["input_ids"], n_gen=G, attention_mask=attention_mask, lengths=lengths,
                                  texts=[], token_ends=[], programs=[], seconds=0.0)
    results = [sandbox.ExecResult(status=s, passed=0, total=1, reward=sandbox.REWARDS[s])
               for s in ("pass", "wrong_answer", "pass", "runtime_error")]
    cfg = stepcoder.Config(model="tiny", temperature=1.0, gamma=1.0, lam=0.95, kl_coef=0.05)
    b = stepcoder.compute_advantages(policy, value_head, rollouts, results, b_mask, torch.arange(4).split(2), cfg)
    actions = b["advantages"][b_mask.bool()]
    assert abs(actions.mean().item()) < 1e-5, "advantages over the actions must have mean 0"
    assert abs(actions.std(unbiased=False).item() - 1) < 1e-4, "advantages over the actions must have std 1"
    assert torch.equal(b["advantages"][~b_mask.bool()], torch.zeros(int((1 - b_mask).sum()))), "padding must be 0"


def test_reference_log_probs_have_the_adapter_off(tmp_path):
    problems = curriculum.load_problems(write_problems(tmp_path / "p.json"))
    tok, policy, value_head = tiny_policy(problems)
    enc = tok([curriculum.build_prompt(p) + p.canonical_solution for p in problems[:4]], return_tensors="pt",
              padding=True, padding_side="left")
    minibatches = torch.tensor([2, 0, 3, 1]).split(2)
    logprobs, ref_logprobs, _, _ = stepcoder.logprobs_before_update(
        policy, value_head, enc["input_ids"], enc["attention_mask"], 16, minibatches, stepcoder.Config(temperature=1.0))
    with torch.no_grad(), policy.disable_adapter():
        base = stepcoder.logprobs_and_values(policy, value_head, enc["input_ids"], enc["attention_mask"], 16, 1.0)[0]
    assert torch.allclose(ref_logprobs, base, atol=1e-5)
    assert (logprobs - ref_logprobs).abs().max() > 1e-3  # the adapter moved the policy: they must differ


def test_the_first_minibatch_ratio_is_one_in_bf16(tmp_path):
    # old log-probs come from the update's own minibatches: the same rows in the same shapes, so even in
    # bf16 the first update's ratio is 1 (computed over other minibatches it is off by ~1e-3 in bf16)
    problems = curriculum.load_problems(ROOT / "data" / "train.json")[:32]  # prompts of many lengths
    tok, policy, value_head = tiny_policy(problems)
    policy.to(torch.bfloat16)
    enc = tok([curriculum.build_prompt(p) + p.canonical_solution for p in problems], return_tensors="pt",
              padding=True, padding_side="left")
    ids, attn = enc["input_ids"], enc["attention_mask"]
    torch.manual_seed(3)
    minibatches = torch.randperm(len(ids)).split(8)
    old, _, _, _ = stepcoder.logprobs_before_update(policy, value_head, ids, attn, 40, minibatches, stepcoder.Config())
    policy.train()
    for mb in minibatches:
        new, _, _ = stepcoder.logprobs_and_values(policy, value_head, ids[mb], attn[mb], 40, 0.8)
        assert torch.equal(new.detach(), old[mb])


def test_the_policy_loss_uses_fgos_mask_and_the_value_loss_every_token(tmp_path, monkeypatch):
    # FGO masking every token leaves the policy loss nothing: 0 in every minibatch. Fails if the loss is
    # masked with b_mask (no FGO), while the value loss still sees every generated token.
    from dataclasses import replace
    from conftest import tiny_args
    real_score = stepcoder.sandbox_results
    def varied_score(programs, problems, cfg):  # rewards that differ across rollouts: advantages that are not all 0
        return [replace(r, reward=(1.0 if i % 2 else -1.0)) for i, r in enumerate(real_score(programs, problems, cfg))]
    monkeypatch.setattr(stepcoder, "sandbox_results", varied_score)
    monkeypatch.setattr(stepcoder, "rollout_fgo_mask", lambda ends, *rest: [0.0] * len(ends))
    run_dir, _, _ = stepcoder.train(stepcoder.parse_config(tiny_args(tmp_path, "--steps", "1", "--no-eval")))
    row = json.loads((run_dir / "metrics.jsonl").read_text())
    assert row["fgo_kept"] == 0.0 and row["pg_loss"] == 0.0 and row["vf_loss"] > 0.0


def test_fgo_numbers_lines_from_the_end_of_the_canonical_prefix():
    # prefix: 3 lines (its last line break is the policy's); the policy writes the end of line 3,
    # then lines 4 (ran) and 5 (never ran). Numbered from line 1 instead, every token would look executed.
    from types import SimpleNamespace
    pieces = ["\nif c:", "\n    d = 4", "\nelse:", "\n    d = 5\n"]
    text = "".join(pieces)
    ends = [sum(map(len, pieces[:i + 1])) for i in range(len(pieces))]
    result = SimpleNamespace(status="pass", executed_lines=frozenset({1, 2, 3, 4, 5}), coverage_complete=True)
    mask = stepcoder.rollout_fgo_mask(ends, text, "a = 1\nb = 2\nc = 3", result, None)
    assert mask == [1.0, 1.0, 1.0, 0.0]  # "\n    d = 5\n" is on line 7, which never ran
    result.status = "compile_error"
    assert stepcoder.rollout_fgo_mask(ends, text, "a = 1\nb = 2\nc = 3", result, None) == [1.0] * 4
