"""StepCoder, small: PPO from compiler feedback, with the CCCS curriculum and FGO masking.

Run it:
    python stepcoder.py --model tiny                    # CPU, no download: SFT warm start, then PPO
    python stepcoder.py --model deepseek-coder-1.3b     # one 24 GB GPU, 4-bit base + LoRA
    python stepcoder.py --model tiny --no-cccs --no-fgo # vanilla PPO (the paper's ablation)
    python stepcoder.py --resume runs/tiny --steps 40   # continue a run to 40 PPO steps in total
    torchrun --nproc_per_node 2 stepcoder.py --model tiny   # data-parallel ranks (distributed.py, README)
    python stepcoder.py --help                          # every flag, with its default

What it implements (Dou et al., 2024, arXiv 2402.01391; docs/METHOD.md), in the order of one PPO step:
    prompt: instruction + the canonical prefix of the problem's CCCS stage (Sec. 3.2, curriculum.py)
    -> rollout -> reward from the sandbox (Eq. 3, sandbox.py) -> FGO mask (Sec. 3.3) -> per-token KL
    penalty (Eq. 4) -> GAE (Eq. 2) -> clipped PPO surrogate (Eq. 1) on the tokens FGO keeps -> log,
    evaluate, checkpoint. The policy is a LoRA adapter on a (4-bit) base model; the value head is one
    linear layer on the same forward pass; the reference policy is the same model with the adapter
    disabled (models.py). Configuration: config.py; run directory, checkpoints, metrics: runs.py.

Where this departs from the paper, and why (the model's departures: models.py):
    1. The value loss has a small coefficient (0.1): the value head shares the policy's adapter, and a
       fresh head's loss must not dominate it.
    2. Smaller budgets: 4 samples per problem (paper 16), fewer problems per step; all flags.
       `--model tiny` draws 2 samples on each of 16 problems, samples at T = 0.5, uses lam = 1
       and reports pass@1 (and the mean reward) from 8 samples per problem beside greedy
       decoding (reasons at config.TINY_DEFAULTS).
    3. Instruct prompts end in "```python\\n"; generation stops at the closing fence, and the
       response's actions end with the program's last token: the fence is not program text, so it
       gets no KL penalty, no value loss and no reward, which lands on the program's last token.
    4. The canonical prefix enters the prompt without its final line break (`prompt_prefix`):
       the policy writes that newline, so its first token is one the warm start has seen there.
    5. A prompt over --max-prompt-tokens loses the end of its problem statement, never the canonical
       prefix or the chat template's header (metric prompts_shortened): the prompt must end where the
       scored program's prefix ends.
    6. A step's rollouts are split into minibatches once, and each PPO epoch visits them in a new order
       (CleanRL reshuffles rows each epoch): the old log-probs are computed on the same minibatches, so
       the first ratio is exactly 1 in bf16 too.
"""
from __future__ import annotations

import bisect
import itertools
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

import curriculum
from support import distributed
import sandbox
from support.config import Config, Interrupted, UsageError, is_tiny, parse_config
from support.models import (FENCE, WARM_START_SAVE_EVERY, add_adapter, build_tiny, is_chat, load_base, make_sampler, quiet_libraries,
                    refresh_sampler, save_tiny_base, warm_start)
from support.runs import (check_run_dir, keep_metrics_until, load_checkpoint, log_step, open_tensorboard, plot_run,
                  prepare_run_dir, save_checkpoint, show_rollout, summary)


# ---------------------- 1. the prompt: instruction + the stage's canonical prefix (CCCS) ---

def prompt_prefix(canonical_prefix: str) -> str:
    """The canonical prefix as it enters the prompt: without its final line break, which the policy
    writes. BPE tokenizers merge a newline with the next line's indentation ("\\n   " is one token),
    so a prompt ending in "\\n" is a token boundary the model never saw in training (on the tiny
    model, 97% of the first PPO step's rollouts then failed to compile; 53% with this)."""
    return canonical_prefix.rstrip()


def count_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=not is_chat(tok))["input_ids"])  # a chat template carries BOS


def fit_prompt(tok, problem, prefix: str, max_tokens: int) -> tuple[str, bool]:
    """The prompt: instruction, then the stage's canonical prefix. It must end exactly where the scored
    program's prefix ends, so over `max_tokens` only the problem statement is shortened (its end cut
    and marked "..."), never the prefix or the chat template's generation header; a prompt whose prefix
    alone is too long stays over the limit. -> (prompt, whether the statement was shortened)"""
    def prompt(question: str) -> str:
        return curriculum.build_prompt(replace(problem, question=question), tok) + prefix
    text = prompt(problem.question)
    if count_tokens(tok, text) <= max_tokens:
        return text, False
    low, high = 0, len(problem.question)  # binary search: the longest head of the statement that fits
    while low < high:
        middle = (low + high + 1) // 2
        if count_tokens(tok, prompt(problem.question[:middle] + " ...")) <= max_tokens:
            low = middle
        else:
            high = middle - 1
    return prompt(problem.question[:low] + " ..."), True


def tokenize_prompts(tok, texts: list[str], device):
    """Left-padded prompt ids, never truncated (fit_prompt sizes them): every row continues from the same column."""
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=not is_chat(tok))
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)

# ---------------------------------------------------------------------------- 2. rollout ---

@torch.no_grad()
def generate(sampler, tok, prompt_ids, prompt_mask, n_new: int, temperature: float, top_p: float,
             batch_size: int, desc: str):
    """Sample continuations in batches; returns response ids (N, G) right-padded, lengths (N,) as
    response_length counts them."""
    sampler.eval()
    chunks, lengths = [], []
    for i in tqdm(range(0, len(prompt_ids), batch_size), desc=desc, leave=False, disable=not distributed.is_main()):
        ids, attention_mask, _ = drop_shared_padding(prompt_ids[i:i + batch_size], prompt_mask[i:i + batch_size])
        resp = decode(sampler, tok, ids, attention_mask, n_new, temperature, top_p)   # (b, g)
        chunks.append(resp)
        lengths += [response_length(tok, row) for row in resp.tolist()]
    width = max(c.shape[1] for c in chunks)
    resp = torch.cat([nn.functional.pad(c, (0, width - c.shape[1]), value=tok.pad_token_id) for c in chunks])
    return resp, torch.tensor(lengths, device=resp.device)                           # (N, G), (N,)


def decode(model, tok, ids, attention_mask, n_new: int, temperature: float, top_p: float):
    """Up to n_new tokens for each left-padded prompt, one forward per token with a KV cache. A row that
    finished (EOS; a chat model's closing fence, its program's end) leaves the batch with its rows of
    the cache: the last steps of a batch compute only the rows still writing (transformers' `generate`
    computes every row until the last one finishes). -> (b, g) response ids, right-padded"""
    from transformers import StaticCache  # (transformers loads lazily: `--help` and bad flags answer at once)
    out = torch.full((len(ids), n_new), tok.pad_token_id, device=ids.device)         # (b, n_new)
    rows = torch.arange(len(ids), device=ids.device)                                 # (r,) the rows still writing
    cache = StaticCache(config=model.config, max_cache_len=ids.shape[1] + n_new)  # preallocated: no copy per token
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)                     # (b, P)
    logits = model(input_ids=ids, attention_mask=attention_mask, position_ids=position_ids, past_key_values=cache,
                   logits_to_keep=1).logits[:, -1].float()  # (r, V); past_key_values: transformers 5.24 also says `cache`
    for t in range(n_new):
        next_tokens = sample_next(logits, temperature, top_p)                        # (r,)
        out[rows, t] = next_tokens
        finished = next_tokens == tok.eos_token_id                                   # (r,)
        if is_chat(tok):  # the fence is 3 characters: it ends within the last 4 tokens (a token may decode to "")
            tails = tok.batch_decode(out[rows, max(0, t - 3):t + 1], skip_special_tokens=True)
            finished |= torch.tensor([FENCE in tail for tail in tails], device=ids.device)
        if finished.all() or t == n_new - 1:
            return out[:, :t + 1]
        if finished.any():
            keep = (~finished).nonzero().squeeze(1)                                  # (r',)
            cache.reorder_cache(keep)  # keeps the cache's rows `keep` (the API beam search reorders with)
            rows, next_tokens, attention_mask = rows[keep], next_tokens[keep], attention_mask[keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], 1)  # (r, P+t+1)
        position_ids = attention_mask.sum(1, keepdim=True) - 1                       # (r, 1)
        logits = model(input_ids=next_tokens[:, None], attention_mask=attention_mask, position_ids=position_ids,
                       past_key_values=cache).logits[:, -1].float()                  # (r, V)


def sample_next(logits, temperature: float, top_p: float):
    """Greedy decoding (temperature 0), or a sample from softmax(logits / temperature) restricted to the
    nucleus: the most likely tokens whose probabilities add up to top_p (transformers' temperature and
    top-p warpers, top_k off). logits (r, V) -> (r,)"""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    sorted_logits, sorted_ids = torch.sort(logits, descending=False)                 # (r, V) least likely first
    outside = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p                      # (r, V) the tail of mass <= 1 - top_p
    outside[:, -1] = False  # the most likely token always stays
    logits = logits.masked_fill(outside.scatter(1, sorted_ids, outside), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1).squeeze(1)


def response_length(tok, ids: list[int]) -> int:
    """The tokens of a response that are actions: up to and including EOS (or all of them). For a chat
    model, up to the program's last token: the closing fence, and anything after it, is not program
    text, so it gets no KL penalty, no value loss and no reward (which lands on the last action)."""
    n = ids.index(tok.eos_token_id) + 1 if tok.eos_token_id in ids else len(ids)
    if not is_chat(tok):
        return n
    text, ends = decode_with_offsets(tok, ids[:n])
    fence = text.find(FENCE)
    if fence < 0:
        return n
    return next(i for i, end in enumerate(ends) if end >= fence) + 1  # the token holding the program's last character


def decode_with_offsets(tok, ids: list[int]) -> tuple[str, list[int]]:
    """Text of the tokens and the end offset of each token in it (for FGO's token -> line map)."""
    text = tok.decode(ids, skip_special_tokens=True)
    pieces = [tok.decode([i], skip_special_tokens=True) for i in ids]
    if "".join(pieces) != text:  # e.g. a character split across tokens: decode growing prefixes
        return text, [len(tok.decode(ids[:k + 1], skip_special_tokens=True)) for k in range(len(ids))]
    return text, list(itertools.accumulate(len(p) for p in pieces))


def program_text(gen_text: str, tok) -> str:
    """The generated code: an instruct prompt (chat template) ends in an opening fence: cut at the closing one."""
    return gen_text.split(FENCE)[0] if is_chat(tok) else gen_text

# ------------------------------------------------------- 3. the sandbox's reward (Eq. 3) ---

def sandbox_results(programs: list[str], problems: list, cfg: Config) -> list:
    """Each program run on its problem's unit tests: verdict, reward (Eq. 3) and executed lines."""
    return sandbox.run_batch([(code, p.tests) for code, p in zip(programs, problems)], timeout=cfg.timeout,
                             workers=distributed.sandbox_workers(), progress=distributed.is_main())

# --------------------------------------------------- 4. FGO: coverage masking (Sec. 3.3) ---

def fgo_mask(token_ends: list[int], text: str, first_line: int,
             executed_lines: frozenset[int] | None, eos_index: int | None) -> list[float]:
    """FGO (paper Sec. 3.3): keep a generated token iff one of its characters is on an executed line.

    `text` is the generated part of the program, which starts on line `first_line`; token i
    spans text[token_ends[i-1]:token_ends[i]] (characters past len(text) were cut off the
    program). `executed_lines=None` means the program did not compile: keep every token, so
    syntax errors still get a gradient. The EOS token is always kept. Blank and comment lines
    never execute, so tokens only on them are masked.
    """
    if executed_lines is None:
        return [1.0] * len(token_ends)
    newlines = [j for j, ch in enumerate(text) if ch == "\n"]
    mask, start = [], 0
    for i, end in enumerate(token_ends):
        lines = {first_line + bisect.bisect_left(newlines, j) for j in range(start, min(end, len(text)))}
        mask.append(1.0 if i == eos_index or lines & executed_lines else 0.0)
        start = end
    return mask


def rollout_fgo_mask(token_ends: list[int], program: str, prefix: str, result, eos_index: int | None) -> list[float]:
    """FGO's mask of one rollout. The generated code follows the stage's canonical prefix (prompt_prefix:
    no final line break), so its first character is on the prefix's last line. A program that did not
    compile, or whose coverage the sandbox could not complete, keeps every token."""
    complete = result.status != "compile_error" and getattr(result, "coverage_complete", True)
    executed = result.executed_lines if complete else None
    return fgo_mask(token_ends, program, prefix.count("\n") + 1, executed, eos_index)

# --------------------------------------------- 5. log-probs and values before the update ---

def drop_shared_padding(ids, attention_mask):
    """Drop the padding columns that every row has, left and right: not computed, and results change by
    float rounding only (positions come from the mask, attention is causal). Prompts are left-padded to the
    longest of the step or evaluation, responses right-padded to the step's longest. -> ids, mask, n right"""
    used = attention_mask.any(0).int()                                               # (T,)
    left, right = int(used.argmax()), int(used.flip(0).argmax())
    return ids[:, left:len(used) - right], attention_mask[:, left:len(used) - right], right


def logprobs_and_values(policy, value_head, input_ids, attention_mask, n_gen: int, temperature: float,
                        rows_per_forward: int = 0):
    """Log-prob of each of the last n_gen tokens, the policy entropy there, and V(s_t) before it, from
    one forward pass (the value head is "shared"). Logits are divided by the sampling temperature, as
    in sampling (SPEC 5). Positions come from the attention mask, so left padding does not shift them.
    rows_per_forward > 0: the rows run that many at a time, shortest first, so that a short row does not
    compute the longest one's padding (--rows-per-forward); the outputs are the same up to float rounding
    and keep the rows' order, and a backward pass goes through every group. -> (B, G) each"""
    if 0 < rows_per_forward < len(input_ids):
        by_length = torch.argsort(attention_mask.sum(1), stable=True)                 # (B,)
        groups = [logprobs_and_values(policy, value_head, input_ids[rows], attention_mask[rows], n_gen, temperature)
                  for rows in by_length.split(rows_per_forward)]
        back_to_batch_order = torch.argsort(by_length)                                # (B,)
        return tuple(torch.cat(outputs)[back_to_batch_order] for outputs in zip(*groups))
    input_ids, attention_mask, n_pad = drop_shared_padding(input_ids, attention_mask)  # (B, T)
    n_gen -= n_pad  # response columns no row uses are not computed: their outputs are 0 (masked anyway)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)                     # (B, T)
    out = policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                 output_hidden_states=True, logits_to_keep=n_gen + 1, use_cache=False)
    logprobs, entropy = token_logprobs(out.logits[:, :-1], input_ids[:, -n_gen:], temperature)  # (B, G) each
    hidden = out.hidden_states[-1][:, -n_gen - 1:-1].float()                         # (B, G, H)
    values = value_head(hidden).squeeze(-1)                                          # (B, G)
    return tuple(nn.functional.pad(x, (0, n_pad)) for x in (logprobs, entropy, values))


def token_logprobs(logits, tokens, temperature: float, chunk: int = 128):
    """log softmax(logits / T) at `tokens`, and the entropy, `chunk` positions at a time: the float32
    (B, chunk, V) copies exist one chunk at a time and the backward pass recomputes them (checkpoint),
    instead of keeping (B, G, V) ones (1.6 GB for 1.3B at the defaults, on paper). logits (B, G, V)."""
    def one_chunk(chunk_logits, chunk_tokens):
        logp_all = torch.log_softmax(chunk_logits.float() / temperature, dim=-1)      # (B, c, V)
        entropy = -(logp_all.exp() * logp_all).sum(-1).detach()                       # (B, c)
        return logp_all.gather(-1, chunk_tokens[..., None]).squeeze(-1), entropy       # (B, c) each
    logprobs, entropy = [], []
    for i in range(0, tokens.shape[1], chunk):
        if torch.is_grad_enabled():
            piece = torch.utils.checkpoint.checkpoint(one_chunk, logits[:, i:i + chunk], tokens[:, i:i + chunk], use_reentrant=False)
        else:
            piece = one_chunk(logits[:, i:i + chunk], tokens[:, i:i + chunk])
        logprobs.append(piece[0])
        entropy.append(piece[1])
    return torch.cat(logprobs, 1), torch.cat(entropy, 1)


@torch.no_grad()
def logprobs_before_update(policy, value_head, b_ids, b_attn, n_gen: int, minibatches: list, temperature: float,
                           rows_per_forward: int = 0):
    """log pi_old and V of the rollouts, and log pi_ref: the same model with the adapter disabled.
    Computed over the very minibatches the update will use, so that a row is computed with the same
    shapes both times: in bf16, other shapes round otherwise and the first ratio would not be 1.
    -> logprobs, ref_logprobs, entropy, values, each (N, G)"""
    policy.eval()
    N = b_ids.shape[0]
    b_logprobs, b_ref_logprobs, b_entropy, b_values = (torch.zeros(N, n_gen, device=b_ids.device) for _ in range(4))
    for mb in minibatches:
        outputs = logprobs_and_values(policy, value_head, b_ids[mb], b_attn[mb], n_gen, temperature, rows_per_forward)
        b_logprobs[mb], b_entropy[mb], b_values[mb] = outputs
        with policy.disable_adapter():
            b_ref_logprobs[mb] = logprobs_and_values(policy, value_head, b_ids[mb], b_attn[mb], n_gen, temperature,
                                                     rows_per_forward)[0]
    return b_logprobs, b_ref_logprobs, b_entropy, b_values

# ---------------------------------------------- 6. rewards and advantages (Eq. 4, Eq. 2) ---

def kl_penalized_rewards(logprobs, ref_logprobs, scores, mask, kl_coef: float):
    """Eq. 4: r_t = -beta * (log pi(a_t) - log pi_ref(a_t)) on every generated token, plus the
    program's reward (Eq. 3) on its last token. All (B, G) except scores (B,)."""
    kl = (logprobs - ref_logprobs) * mask                                            # (B, G)
    rewards = -kl_coef * kl                                                          # (B, G)
    last = mask.sum(1).long() - 1                                                    # (B,)
    rewards[torch.arange(len(scores)), last] += scores
    return rewards, kl


def compute_gae(rewards, values, mask, gamma: float, lam: float):
    """Eq. 2, generalised advantage estimation over the generated tokens; all (B, G).

    delta_t = r_t + gamma * V(s_{t+1}) - V(s_t); A_t = delta_t + gamma * lam * A_{t+1}; the value
    after the last generated token is 0 (the episode ends). returns = advantages + values.
    """
    advantages = torch.zeros_like(rewards)                                           # (B, G)
    next_adv = torch.zeros_like(rewards[:, 0])                                       # (B,)
    next_value = torch.zeros_like(rewards[:, 0])                                     # (B,)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]                    # (B,)
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        next_value = values[:, t] * mask[:, t]
        advantages[:, t] = next_adv
    return advantages, advantages + values


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x, mask):
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask

# ------------------------------------------------------------- 7. the PPO update (Eq. 1) ---

def policy_loss(logprobs, old_logprobs, advantages, mask, clip_coef: float):
    """Eq. 1, the clipped surrogate, averaged over the tokens in `mask` (the FGO-kept ones)."""
    logratio = logprobs - old_logprobs                                               # (B, G)
    ratio = logratio.exp()                                                           # (B, G)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef)
    pg_loss = masked_mean(torch.max(pg_loss1, pg_loss2), mask)
    with torch.no_grad():
        approx_kl = masked_mean((ratio - 1) - logratio, mask)                        # k3 estimator
        clipfrac = masked_mean(((ratio - 1).abs() > clip_coef).float(), mask)
    return pg_loss, ratio, approx_kl, clipfrac


def value_loss(values, old_values, returns, mask, vf_clip: float):
    """Clipped value loss (PPO practice, as in the paper's PPO setup) over generated tokens."""
    v_clipped = old_values + (values - old_values).clamp(-vf_clip, vf_clip)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (v_clipped - returns) ** 2), mask)


def ppo_update(policy, value_head, optimizer, params, batch: dict, minibatches: list, cfg: Config) -> dict:
    """Eq. 1 on the tokens FGO keeps (b_fgo) plus the value loss on every generated token (b_mask),
    cfg.ppo_epochs passes over the step's minibatches, in a new order each pass. -> mean statistics"""
    policy.train()
    stats = {"pg_loss": [], "vf_loss": [], "approx_kl": [], "clipfrac": [], "skipped": 0}
    for _ in tqdm(range(cfg.ppo_epochs), desc="update", leave=False, disable=not distributed.is_main()):
        for k in torch.randperm(len(minibatches)).tolist():
            mb = minibatches[k]
            new_logprobs, _, new_values = logprobs_and_values(                                  # (B, G) each
                policy, value_head, batch["ids"][mb], batch["attn"][mb], batch["n_gen"], cfg.temperature, cfg.rows_per_forward)
            pg_loss, _, approx_kl, clipfrac = policy_loss(                                      # Eq. 1, FGO's tokens
                new_logprobs, batch["logprobs"][mb], batch["advantages"][mb], batch["fgo"][mb], cfg.clip_coef)
            vf_loss = value_loss(new_values, batch["values"][mb], batch["returns"][mb],       # PPO practice
                                 batch["mask"][mb], cfg.vf_clip)
            loss = pg_loss + cfg.vf_coef * vf_loss
            if not distributed.agree(bool(torch.isfinite(loss))):  # every rank skips, or none does
                stats["skipped"] += 1
                continue
            optimizer.zero_grad()
            loss.backward()
            distributed.all_reduce_grads(params)  # several ranks: the mean gradient, so all take the same step
            nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            for name, value in (("pg_loss", pg_loss), ("vf_loss", vf_loss), ("approx_kl", approx_kl), ("clipfrac", clipfrac)):
                stats[name].append(value.item())
    return {name: sum(v) / max(len(v), 1) if isinstance(v, list) else v for name, v in stats.items()}

# --------------------------------------------------------------------------- 8. the loop ---

def ppo_loop(cfg: Config, run_dir: Path, device, problems, evals, tok, policy, value_head, sampler, optimizer, params,
             cccs, rng, start: int, progress: dict, tensorboard) -> None:
    """PPO steps start+1 .. cfg.steps, with the evaluations before and after. `sampler` samples the rollouts and
    evaluations: the policy, or a plain copy holding its merged weights (models.py, departure 4). `progress` says where
    the run is, for Ctrl-C's message."""
    if cfg.eval and start == 0 and distributed.is_main() and not (run_dir / "eval_step0.json").exists():
        progress["where"] = "during the evaluation before RL"
        refresh_sampler(sampler, policy)
        run_evaluation(sampler, tok, evals, cfg, device, run_dir, 0)

    for step in range(start + 1, cfg.steps + 1):
        progress["where"] = f"at step {step}"
        # 1. Curriculum prompt: each problem's instruction, then the canonical prefix of its stage. Several
        #    ranks draw the step's problems alike (one RNG, the same on all) and each takes its share.
        drawn = rng.sample(problems, min(cfg.problems_per_step, len(problems)))
        batch = [p for p in distributed.share(drawn) for _ in range(cfg.samples_per_problem)]
        prefixes = [prompt_prefix(cccs.prefix(p.problem_id)) for p in batch]
        stages = [cccs.stage(p.problem_id) for p in batch]
        prompts = [fit_prompt(tok, p, prefix, cfg.max_prompt_tokens) for p, prefix in zip(batch, prefixes)]
        prompt_ids, prompt_mask = tokenize_prompts(tok, [text for text, _ in prompts], device)  # (N, P)

        # 2. Rollout, sampled with the policy's current weights.
        t0 = time.time()
        refresh_sampler(sampler, policy)
        b_resp, b_len = generate(sampler, tok, prompt_ids, prompt_mask, cfg.max_new_tokens, cfg.temperature,
                                 cfg.top_p, cfg.gen_batch_size, "generate")                   # (N, G), (N,)
        t_generate = time.time() - t0
        decoded = [decode_with_offsets(tok, row[:n]) for row, n in zip(b_resp.tolist(), b_len.tolist())]
        programs = [program_text(text, tok) for text, _ in decoded]

        # 3. Sandbox: the reward is for the whole program, canonical prefix + generated code.
        t0 = time.time()
        results = sandbox_results([prefix + code for prefix, code in zip(prefixes, programs)], batch, cfg)
        t_score = time.time() - t0
        # Every rank's results, in rank order, update the one curriculum: all ranks hold the same state.
        scored = [row for rows in distributed.gather([(p.problem_id, result.status, result.reward, stage)
                                                      for p, result, stage in zip(batch, results, stages)]) for row in rows]
        for problem_id, status, _, stage in scored:  # rollouts from a stage already left are ignored
            cccs.update(problem_id, status == "pass", stage=stage)

        # 4. The masking convention. The tensors below hold generated tokens only (G columns):
        #    the prompt and the canonical prefix are never actions, so they never enter a loss.
        #    b_mask: 1 on the response's actions (response_length: up to and including EOS; a chat
        #            model's up to the program's last token), 0 after them -> value loss, KL
        #            penalty, GAE and whitening; the reward lands on its last 1.
        #    b_fgo:  b_mask, and 0 on tokens whose lines the unit tests never executed (FGO)
        #            -> the policy loss only. With --no-fgo, b_fgo == b_mask.
        N, G = b_resp.shape
        b_mask = (torch.arange(G, device=device)[None] < b_len[:, None]).float()       # (N, G)
        b_fgo = b_mask.clone()                                                          # (N, G)
        if not cfg.no_fgo:
            for i, ((_, ends), code, prefix, result, n) in enumerate(zip(decoded, programs, prefixes, results, b_len.tolist())):
                eos = n - 1 if b_resp[i, n - 1] == tok.eos_token_id else None
                b_fgo[i, :n] = torch.tensor(rollout_fgo_mask(ends, code, prefix, result, eos))
        for i in range(min(cfg.show_rollouts, N) if distributed.is_main() else 0):
            text, ends = decoded[i]
            pieces = [text[a:b] for a, b in zip([0] + ends[:-1], ends)]
            tqdm.write(show_rollout(batch[i], stages[i], prefixes[i], pieces, b_fgo[i].tolist(), results[i]))
        b_ids = torch.cat([prompt_ids, b_resp], 1)                                     # (N, P+G)
        b_attn = torch.cat([prompt_mask, b_mask.long()], 1)                            # (N, P+G)
        b_scores = torch.tensor([result.reward for result in results], device=device)  # (N,)

        # 5. Log-probs of the policy and the reference (adapter off), and values, before the update,
        #    over the minibatches the update will use (departure 6).
        t0 = time.time()
        minibatches = torch.randperm(N, device=device).split(cfg.minibatch_size)
        b_logprobs, b_ref_logprobs, b_entropy, b_values = logprobs_before_update(
            policy, value_head, b_ids, b_attn, G, minibatches, cfg.temperature, cfg.rows_per_forward)  # (N, G) each

        # 6. Rewards with the KL penalty (Eq. 4), GAE (Eq. 2), whitened advantages (per rank: over its own rollouts).
        b_rewards, b_kl = kl_penalized_rewards(b_logprobs, b_ref_logprobs, b_scores, b_mask, cfg.kl_coef)
        b_values = b_values * b_mask
        b_advantages, b_returns = compute_gae(b_rewards, b_values, b_mask, cfg.gamma, cfg.lam)
        b_advantages = whiten(b_advantages, b_mask)

        # 7. PPO update: a few epochs over the minibatches.
        rollouts = {"ids": b_ids, "attn": b_attn, "n_gen": G, "logprobs": b_logprobs, "values": b_values,
                    "advantages": b_advantages, "returns": b_returns, "mask": b_mask, "fgo": b_fgo}
        stats = ppo_update(policy, value_head, optimizer, params, rollouts, minibatches, cfg)
        t_update = time.time() - t0

        # 8. Log, checkpoint. The figures cover every rank's rollouts (their tensors gathered in rank order), the
        #    update's statistics are the ranks' mean, the times the slowest rank's; rank 0 writes.
        every = distributed.gather_rows({"scores": b_scores, "kl": b_kl, "entropy": b_entropy, "mask": b_mask,
                                         "fgo": b_fgo, "returns": b_returns, "values": b_values}, device)
        ranks = distributed.gather({**stats, "t_generate": t_generate, "t_score": t_score, "t_update": t_update,
                                    "prompts_shortened": sum(shortened for _, shortened in prompts)})
        mean_of = lambda name: sum(r[name] for r in ranks) / len(ranks)
        slowest = lambda name: max(r[name] for r in ranks)
        verdicts = [status for _, status, _, _ in scored]
        stage0_rewards = [reward for _, _, reward, stage in scored if stage == 0]
        mask = every["mask"].bool()
        returns_var = torch.var(every["returns"][mask])
        metrics = {
            "step": step, "reward_mean": every["scores"].mean().item(), "pass_rate": verdicts.count("pass") / len(scored),
            "reward_stage0": sum(stage0_rewards) / len(stage0_rewards) if stage0_rewards else None,
            **{f"frac_{v}": verdicts.count(v) / len(scored) for v in sandbox.REWARDS},
            "kl": every["kl"].sum(1).mean().item(), "approx_kl": mean_of("approx_kl"), "clipfrac": mean_of("clipfrac"),
            "entropy": masked_mean(every["entropy"], every["mask"]).item(), "pg_loss": mean_of("pg_loss"), "vf_loss": mean_of("vf_loss"),
            "explained_var": (1 - torch.var((every["returns"] - every["values"])[mask]) / returns_var).item() if returns_var > 0 else 0.0,
            "stage_hist": {str(k): v for k, v in sorted(cccs.stage_histogram().items())},
            "fgo_kept": (every["fgo"].sum() / every["mask"].sum()).item(),
            "gen_tokens_per_s": every["mask"].sum().item() / max(slowest("t_generate"), 1e-9),
            "prompts_shortened": sum(r["prompts_shortened"] for r in ranks), "t_generate": slowest("t_generate"),
            "t_score": slowest("t_score"), "t_update": slowest("t_update"), "skipped_updates": stats["skipped"],
        }
        if distributed.is_main():
            log_step(run_dir, metrics, tensorboard)
            if step % cfg.save_every == 0 or step == cfg.steps:
                save_checkpoint(run_dir, policy, value_head, optimizer, cccs, step, rng)
                progress["saved"] = f"step {step}"

    if cfg.eval and cfg.steps > 0 and distributed.is_main():  # (--steps 0: the warm start alone, evaluated above)
        progress["where"] = f"during the evaluation at step {cfg.steps}"
        refresh_sampler(sampler, policy)
        run_evaluation(sampler, tok, evals, cfg, device, run_dir, cfg.steps)


def train(cfg: Config):
    """The whole run; returns (run directory, policy, value head) for tests and notebooks. Ctrl-C raises
    Interrupted, which says where the run stopped and how to continue it. Under torchrun each process is one
    data-parallel rank (distributed.py): rank 0 alone writes the run directory and prints."""
    started = time.time()
    quiet_libraries()
    problems = curriculum.load_problems(cfg.data)
    distributed.share(problems[:cfg.problems_per_step])  # several ranks: an uneven split is refused at once
    device = distributed.init()  # the GPU, or the CPU; several ranks: joins the process group, cuda:LOCAL_RANK
    evals = {"train": problems}  # --eval: pass@1 on the training problems and on held-out ones
    if cfg.eval and Path(cfg.test_data).resolve() != Path(cfg.data).resolve():
        evals["test"] = curriculum.load_problems(cfg.test_data)
    start = check_run_dir(cfg)
    run_dir = Path(cfg.out)
    checkpoint = run_dir / "checkpoint"
    resuming = bool(cfg.resume) and checkpoint.exists()  # read before rank 0 writes (a new run has no checkpoint)
    distributed.barrier()
    progress = {"where": "while loading the model", "saved": "none"}  # what Ctrl-C's one line says
    try:
        # Load the model: nothing is written before it loaded. `tiny` is built and warm-started here
        # (--sft-seed), then saved as the run's base model.
        tiny = is_tiny(cfg.model)
        if cfg.model != "tiny":
            tok, base = load_base(cfg.model, cfg, device, tiny=tiny)
        if distributed.is_main():
            prepare_run_dir(cfg)
        if start and distributed.is_main():
            tqdm.write(f"resuming {run_dir} from its checkpoint at step {start} (to step {cfg.steps})")
        sft_checkpoint = run_dir / "warm_start.pt"
        warm_start_progress = {"where": "during the warm start", "saved": f"the warm start's, every {WARM_START_SAVE_EVERY} steps"}
        if cfg.model == "tiny":
            if distributed.is_main() and not (run_dir / "base").exists():  # rank 0 builds it, every rank loads it
                progress.update(warm_start_progress)
                tok, model = build_tiny(problems, cfg.sft_seed)
                warm_start(model.to(device), tok, problems, cfg, random.Random(cfg.sft_seed), device, sft_checkpoint)
                save_tiny_base(model, tok, run_dir / "base", cfg)
                sft_checkpoint.unlink(missing_ok=True)
            distributed.barrier()
            tok, base = load_base(str(run_dir / "base"), cfg, device, tiny=True)
        rng = random.Random(cfg.seed)  # RL's RNG, in the same state whether the base was warm-started
        torch.manual_seed(cfg.seed)     # in this run or loaded (`--model RUN/base` then repeats the run exactly)
        policy, value_head = add_adapter(base, cfg, str(checkpoint / "adapter") if resuming else None)
        if not tiny and cfg.sft_steps and not resuming and distributed.is_main():  # models.py, departure 2: SFT
            progress.update(warm_start_progress)                                   # trains the adapter (rank 0's
            warm_start(policy, tok, problems, cfg, random.Random(cfg.sft_seed), device, sft_checkpoint)  # is broadcast)
        adapter_params = [p for p in policy.parameters() if p.requires_grad]
        head_params = list(value_head.parameters())
        distributed.broadcast_params(adapter_params + head_params)  # several ranks: all start from rank 0's
        optimizer = torch.optim.AdamW([{"params": adapter_params, "lr": cfg.lr}, {"params": head_params, "lr": cfg.vf_lr}],
                                      eps=1e-5, weight_decay=0.0)
        cccs = curriculum.Curriculum(problems, alpha=cfg.cccs_alpha, rho_t=cfg.cccs_threshold, enabled=not cfg.no_cccs)
        if resuming:  # every rank: the same adapter, value head, optimizer, curriculum, and rank 0's RNG
            start = load_checkpoint(checkpoint, value_head, optimizer, cccs, rng)
        elif distributed.is_main():  # step 0: the warm start's result, so an interrupted run never redoes it
            save_checkpoint(run_dir, policy, value_head, optimizer, cccs, 0, rng)
            sft_checkpoint.unlink(missing_ok=True)
        distributed.own_rng()  # rank r > 0: its own sampling stream (distributed.py says how)
        progress["saved"] = f"step {start}"
        if distributed.is_main():
            keep_metrics_until(run_dir / "metrics.jsonl", start)
        tensorboard = open_tensorboard(run_dir, cfg.tensorboard and distributed.is_main())
        sampler = make_sampler(policy, cfg)
        ppo_loop(cfg, run_dir, device, problems, evals, tok, policy, value_head, sampler, optimizer,
                 adapter_params + head_params, cccs, rng, start, progress, tensorboard)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted {progress['where']} (last checkpoint: {progress['saved']}); continue with: "
                          f"python3 stepcoder.py --resume {run_dir}") from None
    if distributed.is_main():
        plot_run(run_dir)
        tqdm.write(summary(run_dir, time.time() - started))
    distributed.finish()
    return run_dir, policy, value_head


# ------------------------------- evaluation (not the method: pass@1 before and after RL) ---

def run_evaluation(sampler, tok, evals: dict, cfg: Config, device, run_dir: Path, step: int) -> None:
    """pass@1 at stage 0 on each problem set (held-out ones greedily, unless --eval-test-sampled), into
    eval_step<N>.json. Its own RNG, seeded with 0 at every evaluation of every run: a run with --eval trains
    exactly as one without, and all evaluations share their random numbers (a change is the model's, not the draw's)."""
    report = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        for split, problems in evals.items():
            settings = cfg if split == "train" or cfg.eval_test_sampled else replace(cfg, eval_temperature=0.0)
            report[split] = evaluate(sampler, tok, problems, settings, device, f"step {step}, {split}")
    (run_dir / f"eval_step{step}.json").write_text(json.dumps(report, indent=1))


def evaluate(sampler, tok, problems: list, cfg: Config, device, tag: str) -> dict:
    """pass@1 at stage 0 (no canonical prefix), per difficulty and overall: the mean pass rate of
    --eval-samples samples per problem at --eval-temperature (Chen et al. 2021's unbiased estimate
    for k = 1), their mean reward (Eq. 3: on fixed problems, unlike the rollouts' under CCCS), and
    greedy decoding's pass rate ("greedy")."""
    prompts = [fit_prompt(tok, p, "", cfg.max_prompt_tokens)[0] for p in problems]
    order = sorted(range(len(problems)), key=lambda i: len(prompts[i]))  # batches of similar lengths pad less
    problems = [problems[i] for i in order]
    ids, attention_mask = tokenize_prompts(tok, [prompts[i] for i in order], device)
    runs = [("greedy", 0.0, 1)] + [("pass@1", cfg.eval_temperature, cfg.eval_samples)] * (cfg.eval_temperature > 0)
    table: dict[str, dict[str, list[float]]] = {d: {} for d in ("overall", *curriculum.DIFFICULTIES)}  # -> run -> rewards
    solved: dict[str, dict[str, float]] = {str(p.problem_id): {} for p in problems}  # problem -> run -> pass rate
    for key, temperature, n in runs:
        resp, lengths = generate(sampler, tok, ids.repeat_interleave(n, 0), attention_mask.repeat_interleave(n, 0), cfg.max_new_tokens,
                                 temperature, cfg.eval_top_p, cfg.gen_batch_size, f"eval {tag}, {key}")
        programs = [program_text(tok.decode(r[:k], skip_special_tokens=True), tok)
                    for r, k in zip(resp.tolist(), lengths.tolist())]
        samples = [p for p in problems for _ in range(n)]
        for p, r in zip(samples, sandbox_results(programs, samples, cfg)):
            for d in (p.difficulty, "overall"):
                table[d].setdefault(key, []).append(r.reward)
            solved[str(p.problem_id)][key] = solved[str(p.problem_id)].get(key, 0.0) + (r.reward == 1.0) / n
    rate = lambda rewards: sum(r == 1.0 for r in rewards) / len(rewards)
    mean = lambda rewards: sum(rewards) / len(rewards)
    report = {d: {"pass@1": rate(c.get("pass@1", c["greedy"])), "reward": mean(c.get("pass@1", c["greedy"])),
                  "greedy": rate(c["greedy"]), "n": len(c["greedy"])} for d, c in table.items() if c}
    report["problems"] = solved  # which problems pass (bench/ablations.py: those the warm start never solves)
    tqdm.write(f"pass@1 ({tag})  " + "  ".join(f"{d}: {v['pass@1']:.3f} (greedy {v['greedy']:.3f}, reward "
                                               f"{v['reward']:+.3f}, n={v['n']})" for d, v in report.items() if d != "problems"))
    return report

# -------------------------------------------------------------------------- command line ---

def main(argv: list[str] | None = None) -> int:
    try:
        train(parse_config(argv))
    except (UsageError, curriculum.DataError) as e:
        if distributed.is_main():  # several ranks: each has the same error, rank 0 says it
            print(f"stepcoder: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        if distributed.is_main():
            print(f"stepcoder: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before the run directory was chosen: nothing to continue
        print("stepcoder: interrupted", file=sys.stderr)
        return 130
    except torch.cuda.OutOfMemoryError:
        print("stepcoder: CUDA out of memory: try --gradient-checkpointing, a smaller --minibatch-size or "
              "--gen-batch-size, fewer --max-new-tokens, or 4-bit loading (drop --no-4bit)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
