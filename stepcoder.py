"""StepCoder, small: PPO from compiler feedback, with the CCCS curriculum and FGO masking.

Run it:
    python stepcoder.py --model tiny                    # CPU, no download: SFT warm start, then PPO
    python stepcoder.py --model deepseek-coder-1.3b     # one 24 GB GPU, 4-bit base + LoRA
    python stepcoder.py --model tiny --no-cccs --no-fgo # vanilla PPO (the paper's ablation)
    python stepcoder.py --model tiny --algo grpo        # GRPO beside PPO, CCCS and FGO on (docs/METHOD.md, section 10)
    python stepcoder.py --resume runs/tiny --steps 40   # continue a run to 40 PPO steps in total
    torchrun --nproc_per_node 2 stepcoder.py --model tiny   # data-parallel ranks (support/distributed.py)
    python stepcoder.py --help                          # every flag, with its default

What it implements (Dou et al., 2024, arXiv 2402.01391; docs/METHOD.md), in the order of one PPO step:
    1. prompt: instruction + the canonical prefix of the problem's CCCS stage (Sec. 3.2, curriculum.py)
    2. rollout, sampled by the policy          3. reward from the sandbox (Eq. 3, sandbox.py)
    4. FGO mask (Sec. 3.3)                     5. log-probs of the policy and the reference, values
    6. per-token KL penalty (Eq. 4), GAE (Eq. 2)
    7. clipped PPO surrogate (Eq. 1) on the tokens FGO keeps, and the value loss
    8. the loop: log, checkpoint; evaluation before and after RL (support/evaluation.py).
The policy is a LoRA adapter on a (4-bit) base model; the value head is one linear layer on the same
forward pass; the reference policy is the same model with the adapter disabled (support/models.py).
`--algo grpo` changes steps 5-7 only (GRPO, Shao et al. 2024): no values, group advantages, the KL a loss term.

Where this departs from the paper, and why (the model's departures: support/models.py):
    1. Value-loss coefficient 0.1: the value head shares the policy's adapter, and a fresh head's loss
       must not dominate it.
    2. Smaller budgets: 4 samples per problem (paper 16), fewer problems per step; all flags. `--model
       tiny` draws 2 samples on each of 16 problems, samples at T = 0.5, uses lam = 1 and reports pass@1
       from 8 samples per problem beside greedy decoding (reasons at support/config.py: TINY_DEFAULTS).
    3. The fence is not an action: instruct prompts end in "```python\\n"; generation stops at the
       closing fence, and the response's actions end with the program's last token, so the fence gets
       no KL penalty, no value loss and no reward, which lands on the program's last token.
    4. The prefix without its last line break: the canonical prefix enters the prompt without it
       (`prompt_prefix`), so the policy's first token is one the warm start has seen there.
    5. Long prompts lose their statement: a prompt over --max-prompt-tokens loses the end of its
       problem statement, never the canonical prefix or the chat template's header (curriculum.py:
       fit_prompt): the prompt must end where the scored program's prefix ends.
    6. Minibatches fixed per step: a step's rollouts are split into minibatches once, and each PPO
       epoch visits them in a new order (CleanRL reshuffles rows each epoch): the old log-probs are
       computed on the same minibatches, so the first ratio is exactly 1 in bf16 too.
    7. A rollout the sandbox itself failed on (status sandbox_error, after one retry) is no verdict:
       left out of the loss, the curriculum and the evaluation's pass counts, counted apart
       (frac_sandbox_error; docs/METHOD.md, section 2): the policy must not learn from the judge's fault.
"""
from __future__ import annotations

import bisect
import itertools
import random
import sys
import time
from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn as nn
from tqdm import tqdm

import curriculum
import sandbox
from curriculum import FENCE, fit_prompt, is_chat
from support import display, distributed, evaluation, memory
from support.config import Config, Interrupted, UsageError, parse_config
from support.models import decode, in_row_groups, load_agent, make_optimizer, quiet_libraries, refresh_sampler
from support.page import keep_page_until, record_step, write_page
from support.runs import (Run, end_step, exit_code, interrupted, keep_metrics_until, load_checkpoint, log_step,
                          open_run, open_tensorboard, plot_run, restore_signals, save_checkpoint, show_rollouts,
                          step_metrics, stopped, summary)


# ---------------------- 1. the prompt: instruction + the stage's canonical prefix (CCCS) ---

def prompt_prefix(canonical_prefix: str) -> str:
    """The canonical prefix as it enters the prompt: without its final line break, which the policy
    writes. BPE tokenizers merge a newline with the next line's indentation ("\\n   " is one token),
    so a prompt ending in "\\n" is a token boundary the model never saw in training."""
    return canonical_prefix.rstrip()


def tokenize_prompts(tok, texts: list[str], device):
    """Left-padded prompt ids, never truncated (fit_prompt sizes them): every row continues from the
    same column. A chat template writes its own BOS; a plain prompt gets the tokenizer's."""
    encoded = tok(texts, return_tensors="pt", padding=True, padding_side="left",
                  add_special_tokens=not is_chat(tok))
    return encoded["input_ids"].to(device), encoded["attention_mask"].to(device)

# ---------------------------------------------------------------------------- 2. rollout ---

@torch.no_grad()
def generate(sampler, tok, prompt_ids, prompt_mask, n_new: int, temperature: float, top_p: float,
             batch_size: int, desc: str):
    """Sample continuations in batches (support/models.py: decode, one forward per token with a KV cache);
    returns response ids (N, G) right-padded, and the number of actions of each (N,), as response_length
    counts them."""
    sampler.eval()
    chunks, lengths = [], []
    for i in tqdm(range(0, len(prompt_ids), batch_size), desc=desc, leave=False,
                  disable=not distributed.is_main()):
        ids, attention_mask, _ = drop_shared_padding(prompt_ids[i:i + batch_size],
                                                     prompt_mask[i:i + batch_size])
        responses = decode(sampler, tok, ids, attention_mask, n_new, temperature, top_p)   # (b, g)
        chunks.append(responses)
        lengths += [response_length(tok, row) for row in responses.tolist()]
    width = max(chunk.shape[1] for chunk in chunks)
    padded = [nn.functional.pad(chunk, (0, width - chunk.shape[1]), value=tok.pad_token_id)
              for chunk in chunks]
    responses = torch.cat(padded)                                                    # (N, G)
    return responses, torch.tensor(lengths, device=responses.device)                 # (N, G), (N,)


def response_length(tok, ids: list[int]) -> int:
    """The tokens of a response that are actions: up to and including EOS (or all of them). For a chat
    model, up to the token holding the program's last character (departure 'the fence is not an
    action')."""
    n = ids.index(tok.eos_token_id) + 1 if tok.eos_token_id in ids else len(ids)
    if not is_chat(tok):
        return n
    text, ends = decode_with_offsets(tok, ids[:n])
    fence = text.find(FENCE)
    if fence < 0:
        return n
    return next(i for i, end in enumerate(ends) if end >= fence) + 1


def decode_with_offsets(tok, ids: list[int]) -> tuple[str, list[int]]:
    """Text of the tokens and the end offset of each token in it (for FGO's token -> line map)."""
    text = tok.decode(ids, skip_special_tokens=True)
    pieces = [tok.decode([i], skip_special_tokens=True) for i in ids]
    if "".join(pieces) != text:  # e.g. a character split across tokens: decode growing prefixes
        return text, [len(tok.decode(ids[:k + 1], skip_special_tokens=True)) for k in range(len(ids))]
    return text, list(itertools.accumulate(len(p) for p in pieces))


def program_text(tok, ids: list[int]) -> str:
    """The program a response writes: its text up to EOS; an instruct prompt ends in an opening fence, so
    there the program ends at the closing one. The whole response is cut, not its actions' text: the token
    holding the program's last character may also hold the first backticks of the fence."""
    if tok.eos_token_id in ids:
        ids = ids[:ids.index(tok.eos_token_id)]
    program = tok.decode(ids, skip_special_tokens=True)
    return program.split(FENCE)[0] if is_chat(tok) else program


@dataclass
class Rollouts:
    """One step's rollouts on this rank: row i answers problems[i] (each drawn problem several times)."""
    problems: list            # (N,) the problem of each row
    stages: list[int]         # (N,) its CCCS stage when the prompt was built
    prefixes: list[str]       # (N,) the canonical prefix the prompt ends with (prompt_prefix)
    prompts_shortened: int    # prompts whose problem statement fit_prompt shortened
    ids: torch.Tensor         # (N, P+G) the left-padded prompt, then the right-padded response
    n_gen: int                # G, the response columns
    attention_mask: torch.Tensor  # (N, P+G)
    lengths: torch.Tensor     # (N,) the response's actions (response_length)
    texts: list[str]          # (N,) the actions' text
    token_ends: list[list[int]]  # (N, n_i) each action token's end offset in its text
    programs: list[str]       # (N,) prefix + generated program: what the sandbox runs
    seconds: float            # time spent generating


def collect_rollouts(sampler, policy, tok, problems: list, cccs, cfg: Config, device) -> Rollouts:
    """Steps 1-2: each problem's prompt at its CCCS stage, then one sampled response per row."""
    prefixes = [prompt_prefix(curriculum.program_prefix(p, cccs.prefix(p.problem_id), tok)) for p in problems]
    stages = [cccs.stage(p.problem_id) for p in problems]
    prompts = [fit_prompt(tok, p, prefix, cfg.max_prompt_tokens) for p, prefix in zip(problems, prefixes)]
    prompt_ids, prompt_mask = tokenize_prompts(tok, [text for text, _ in prompts], device)  # (N, P)
    started = time.time()
    refresh_sampler(sampler, policy)  # the rollouts are sampled with the policy's current weights
    responses, lengths = generate(sampler, tok, prompt_ids, prompt_mask, cfg.max_new_tokens, cfg.temperature,
                                  cfg.top_p, cfg.gen_batch_size, "generate")            # (N, G), (N,)
    seconds = time.time() - started
    rows = responses.tolist()
    decoded = [decode_with_offsets(tok, row[:n]) for row, n in zip(rows, lengths.tolist())]
    programs = [prefix + program_text(tok, row) for prefix, row in zip(prefixes, rows)]
    columns = torch.arange(responses.shape[1], device=device)                        # (G,)
    response_mask = (columns[None] < lengths[:, None]).long()                        # (N, G)
    return Rollouts(problems=problems, stages=stages, prefixes=prefixes,
                    prompts_shortened=sum(shortened for _, shortened in prompts),
                    ids=torch.cat([prompt_ids, responses], 1), n_gen=responses.shape[1],
                    attention_mask=torch.cat([prompt_mask, response_mask], 1), lengths=lengths,
                    texts=[text for text, _ in decoded], token_ends=[ends for _, ends in decoded],
                    programs=programs, seconds=seconds)

# ------------------------------------------------------- 3. the sandbox's reward (Eq. 3) ---

def sandbox_results(programs: list[str], problems: list, cfg: Config) -> list:
    """Each program run on its problem's unit tests: verdict, reward (Eq. 3) and executed lines."""
    jobs = [(code, p.tests) for code, p in zip(programs, problems)]
    return sandbox.run_batch(jobs, timeout=cfg.timeout, workers=distributed.sandbox_workers(),
                             progress=distributed.is_main())


def score_rollouts(rollouts: Rollouts, cccs, cfg: Config) -> tuple[list, list]:
    """Step 3: the reward is for the whole program, canonical prefix + generated code. Every rank's
    verdicts, in rank order, then move the one curriculum, so all ranks hold the same state; a rollout
    from a stage its problem has already left is ignored. A rollout the sandbox failed on (status
    sandbox_error: no verdict) gets reward 0 and moves nothing: action_masks leaves it out of every loss.
    -> (this rank's results, every rank's (problem id, status, reward, stage))"""
    results = [replace(result, reward=0.0) if result.status == sandbox.SANDBOX_ERROR else result
               for result in sandbox_results(rollouts.programs, rollouts.problems, cfg)]
    mine = [(p.problem_id, result.status, result.reward, stage)
            for p, result, stage in zip(rollouts.problems, results, rollouts.stages)]
    scored = [row for rows in distributed.gather(mine) for row in rows]
    for problem_id, status, _, stage in scored:
        if status != sandbox.SANDBOX_ERROR:
            cccs.update(problem_id, status == "pass", stage=stage)
    return results, scored

# --------------------------------------------------- 4. FGO: coverage masking (Sec. 3.3) ---

def fgo_mask(token_ends: list[int], text: str, first_line: int,
             executed_lines: frozenset[int] | None, eos_index: int | None) -> list[float]:
    """FGO (paper Sec. 3.3): keep a generated token iff one of its characters is on an executed line.

    `text` is the generated part of the program, which starts on line `first_line`; token i
    spans text[token_ends[i-1]:token_ends[i]] (characters past len(text) were cut off the
    program). `executed_lines=None` means the program did not compile: keep every token, so
    syntax errors still get a gradient. The EOS token is always kept. Blank and comment lines
    never execute, so tokens only on them are masked. Lines are numbered as Python (and the sandbox) numbers
    them: a line ends at \\n, \\r\\n or \\r, not at a form feed or \\u2028.
    """
    if executed_lines is None:
        return [1.0] * len(token_ends)
    ends = itertools.accumulate(map(len, curriculum._lines(text)))  # each line's end offset, its line break kept
    newlines = [end - 1 for end in ends if text[end - 1] in "\r\n"]  # the last character of each ended line
    mask, start = [], 0
    for i, end in enumerate(token_ends):
        lines = {first_line + bisect.bisect_left(newlines, j) for j in range(start, min(end, len(text)))}
        mask.append(1.0 if i == eos_index or lines & executed_lines else 0.0)
        start = end
    return mask


def rollout_fgo_mask(token_ends: list[int], program: str, prefix: str, result,
                     eos_index: int | None) -> list[float]:
    """FGO's mask of one rollout. The generated code follows the stage's canonical prefix (prompt_prefix:
    no final line break), so its first character is on the prefix's last line. A program that did not
    compile, or whose coverage the sandbox could not complete, keeps every token."""
    complete = result.status != "compile_error" and result.coverage_complete
    executed = result.executed_lines if complete else None
    return fgo_mask(token_ends, program, len(curriculum._lines(prefix + "x")), executed, eos_index)


def action_masks(rollouts: Rollouts, results: list, tok, fgo: bool):
    """Step 4, and the one masking convention. The tensors of steps 4-8 hold generated tokens only
    (G columns): the prompt and the canonical prefix are never actions, so they never enter a loss.
        b_mask: 1 on the response's actions (response_length: up to and including EOS; a chat model's
                up to the program's last token), 0 after them -> value loss, KL penalty, GAE and
                whitening; the reward lands on its last 1.
        b_fgo:  b_mask, and 0 on tokens whose lines the unit tests never executed (FGO) -> the policy
                loss only. With --no-fgo, b_fgo == b_mask.
    A rollout the sandbox failed on (sandbox_error) has both all 0: out of every loss, GAE and whitening.
    -> b_mask, b_fgo, each (N, G)"""
    N, G = len(rollouts.programs), rollouts.n_gen
    columns = torch.arange(G, device=rollouts.lengths.device)                        # (G,)
    judged = [result.status != sandbox.SANDBOX_ERROR for result in results]
    rows = torch.tensor(judged, device=columns.device)                               # (N,)
    b_mask = ((columns[None] < rollouts.lengths[:, None]) & rows[:, None]).float()   # (N, G)
    b_fgo = b_mask.clone()                                                           # (N, G)
    if not fgo:
        return b_mask, b_fgo
    responses = rollouts.ids[:, -G:]                                                 # (N, G)
    for i in [i for i in range(N) if judged[i]]:
        n = int(rollouts.lengths[i])
        eos = n - 1 if responses[i, n - 1] == tok.eos_token_id else None
        generated = rollouts.programs[i][len(rollouts.prefixes[i]):]
        b_fgo[i, :n] = torch.tensor(rollout_fgo_mask(rollouts.token_ends[i], generated, rollouts.prefixes[i],
                                                     results[i], eos))
    return b_mask, b_fgo


# --------------------------------------------- 5. log-probs and values before the update ---

def drop_shared_padding(ids, attention_mask):
    """Drop the padding columns that every row has, left and right: not computed, and results change by
    float rounding only (positions come from the mask, attention is causal). Prompts are left-padded to
    the longest of the step or evaluation, responses right-padded to the step's longest.
    -> ids, mask, the number of right columns dropped"""
    used = attention_mask.any(0).int()                                               # (T,)
    left = int(used.argmax())
    right = int(used.flip(0).argmax())
    return ids[:, left:len(used) - right], attention_mask[:, left:len(used) - right], right


def logprobs_and_values(policy, value_head, input_ids, attention_mask, n_gen: int, temperature: float):
    """Log-prob of each of the last n_gen tokens, the policy's entropy there, and V(s_t) before it, from
    one forward pass (the value head is "shared"); without a value head (the reference pass), no values.
    Logits are divided by the sampling temperature, as in sampling (docs/METHOD.md, section 5). The
    logits at position t predict token t+1, and V(s_t) is read from the hidden state there: both come
    from the position *before* each generated token. Positions come from the attention mask, so left
    padding does not shift them. -> logprobs, entropy(, values), each (B, G)"""
    input_ids, attention_mask, n_pad = drop_shared_padding(input_ids, attention_mask)  # (B, T)
    n_gen -= n_pad  # response columns no row uses are not computed: their outputs are 0 (masked anyway)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)                      # (B, T)
    out = policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                 output_hidden_states=value_head is not None, logits_to_keep=n_gen + 1, use_cache=False)
    logprobs, entropy = token_logprobs(out.logits[:, :-1], input_ids[:, -n_gen:], temperature)  # (B, G) each
    outputs = [logprobs, entropy]
    if value_head is not None:
        hidden = out.hidden_states[-1][:, -n_gen - 1:-1].float()                     # (B, G, H)
        outputs.append(value_head(hidden).squeeze(-1))                               # (B, G)
    return tuple(nn.functional.pad(x, (0, n_pad)) for x in outputs)


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
        chunk_logits, chunk_tokens = logits[:, i:i + chunk], tokens[:, i:i + chunk]
        if torch.is_grad_enabled():
            piece = torch.utils.checkpoint.checkpoint(one_chunk, chunk_logits, chunk_tokens,
                                                      use_reentrant=False)
        else:
            piece = one_chunk(chunk_logits, chunk_tokens)
        logprobs.append(piece[0])
        entropy.append(piece[1])
    return torch.cat(logprobs, 1), torch.cat(entropy, 1)


def forward_rows(policy, value_head, ids, attention_mask, n_gen: int, cfg: Config):
    """logprobs_and_values on a minibatch, --rows-per-forward rows per pass (support/models.py:
    in_row_groups, a CPU speed-up that does not change the results beyond float rounding)."""
    forward = partial(logprobs_and_values, policy, value_head, n_gen=n_gen, temperature=cfg.temperature)
    return in_row_groups(forward, ids, attention_mask, cfg.rows_per_forward)


@torch.no_grad()
def logprobs_before_update(policy, value_head, b_ids, b_attention_mask, n_gen: int, minibatches: list,
                           cfg: Config):
    """log pi_old and V of the rollouts (no value head: V = 0), and log pi_ref: the same model with the adapter disabled.
    Computed over the very minibatches the update will use (departure 'minibatches fixed per step').
    -> logprobs, ref_logprobs, entropy, values, each (N, G)"""
    policy.eval()
    N = b_ids.shape[0]
    b_logprobs, b_ref_logprobs, b_entropy, b_values = (torch.zeros(N, n_gen, device=b_ids.device)
                                                       for _ in range(4))                   # (N, G) each
    for mb in minibatches:
        mb_ids, mb_attention_mask = b_ids[mb], b_attention_mask[mb]
        outputs = forward_rows(policy, value_head, mb_ids, mb_attention_mask, n_gen, cfg)
        b_logprobs[mb], b_entropy[mb] = outputs[:2]
        if len(outputs) == 3:  # GRPO passes no value head: its values stay 0
            b_values[mb] = outputs[2]
        with policy.disable_adapter():
            b_ref_logprobs[mb] = forward_rows(policy, None, mb_ids, mb_attention_mask, n_gen, cfg)[0]
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
    """(x - mean) / std over the tokens in `mask` only; 0 outside it."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def group_advantages(scores, group_size: int, mask, eps: float = 1e-4):
    """GRPO (Shao et al. 2024, Sec. 4.1.2, outcome supervision): the rows of one problem are `group_size`
    consecutive rows, a group; a rollout's advantage is (its reward - the group's mean) / (the group's
    std + eps), on each of its action tokens. Mean and std are over the group only (std with Bessel's
    n - 1, as TRL's GRPOTrainer); a group whose rewards are all equal gets 0. scores (N,), mask (N, G)."""
    groups = scores.view(-1, group_size)                                             # (N/g, g)
    mean = groups.mean(1, keepdim=True)                                              # (N/g, 1)
    std = groups.std(1, keepdim=True)                                                # (N/g, 1)
    advantages = ((groups - mean) / (std + eps)).view(-1)                            # (N,)
    return advantages[:, None] * mask                                                # (N, G)


def compute_advantages(policy, value_head, rollouts: Rollouts, results: list, b_mask, minibatches: list,
                       cfg: Config) -> dict:
    """Steps 5-6: log-probs (and PPO's values) before the update, then the advantages. PPO: rewards with the
    KL penalty (Eq. 4), GAE (Eq. 2), advantages whitened over this rank's generated tokens. GRPO: no value
    head forward, no KL in the reward (it is a loss term: ppo_update), group advantages. -> the b_ tensors"""
    grpo = cfg.algo == "grpo"
    b_logprobs, b_ref_logprobs, b_entropy, b_values = logprobs_before_update(        # (N, G) each
        policy, None if grpo else value_head, rollouts.ids, rollouts.attention_mask, rollouts.n_gen,
        minibatches, cfg)
    b_scores = torch.tensor([result.reward for result in results], device=b_mask.device)  # (N,)
    if grpo:
        b_advantages = group_advantages(b_scores, cfg.samples_per_problem, b_mask)   # (N, G)
        # a group holding a sandbox_error row (b_mask all 0, reward 0: no verdict) has no true baseline: left out
        judged = b_mask.any(1).view(-1, cfg.samples_per_problem).all(1)               # (N/g,)
        b_advantages *= judged.repeat_interleave(cfg.samples_per_problem)[:, None]   # (N, G)
        return {"logprobs": b_logprobs, "ref_logprobs": b_ref_logprobs, "values": b_values,
                "advantages": b_advantages, "returns": b_values, "scores": b_scores,
                "kl": (b_logprobs - b_ref_logprobs) * b_mask, "entropy": b_entropy}
    b_rewards, b_kl = kl_penalized_rewards(b_logprobs, b_ref_logprobs, b_scores, b_mask, cfg.kl_coef)
    b_values = b_values * b_mask
    b_advantages, b_returns = compute_gae(b_rewards, b_values, b_mask, cfg.gamma, cfg.lam)
    b_advantages = whiten(b_advantages, b_mask)
    return {"logprobs": b_logprobs, "values": b_values, "advantages": b_advantages, "returns": b_returns,
            "scores": b_scores, "kl": b_kl, "entropy": b_entropy}

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


def k3_kl(logprobs, ref_logprobs, mask):
    """GRPO's KL term (Shao et al. 2024, Eq. 4): KL(pi || pi_ref) estimated per token by Schulman's k3,
    exp(ref - logp) - (ref - logp) - 1 (unbiased, never negative), averaged over the tokens in `mask`."""
    log_ratio = ref_logprobs - logprobs                                              # (B, G)
    return masked_mean(log_ratio.exp() - log_ratio - 1, mask)


def value_loss(values, old_values, returns, mask, vf_clip: float):
    """Clipped value loss (PPO practice, as in the paper's PPO setup) over generated tokens."""
    v_clipped = old_values + (values - old_values).clamp(-vf_clip, vf_clip)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (v_clipped - returns) ** 2), mask)


def ppo_update(policy, value_head, optimizer, params, batch: dict, minibatches: list, cfg: Config, scaler) -> dict:
    """Step 7: Eq. 1 on the tokens FGO keeps (batch["fgo"]) plus the value loss on every generated token
    (batch["mask"]), cfg.ppo_epochs passes over the step's minibatches, in a new order each pass; one
    gradient norm, of the adapter and the value head together, clipped to cfg.max_grad_norm. `scaler`
    scales the loss where the model computes in float16 (support/models.py: loss_scaler), else does nothing.
    -> the mean of each statistic, and the number of minibatches skipped for a non-finite loss"""
    policy.train()
    grpo = cfg.algo == "grpo"
    stats = {"pg_loss": [], "vf_loss": [], "kl_loss": [], "approx_kl": [], "clipfrac": []}
    skipped = 0
    for _ in tqdm(range(cfg.ppo_epochs), desc="update", leave=False, disable=not distributed.is_main()):
        for k in torch.randperm(len(minibatches)).tolist():
            mb = minibatches[k]
            outputs = forward_rows(policy, None if grpo else value_head, batch["ids"][mb], batch["attn"][mb],
                                   batch["n_gen"], cfg)                              # (B, G) each
            new_logprobs = outputs[0]
            pg_loss, _, approx_kl, clipfrac = policy_loss(                           # Eq. 1, FGO's tokens
                new_logprobs, batch["logprobs"][mb], batch["advantages"][mb], batch["fgo"][mb],
                cfg.clip_coef)
            if grpo:  # GRPO (Shao et al. 2024, Eq. 3): the KL to the reference as a loss term, every action
                kl_loss = k3_kl(new_logprobs, batch["ref_logprobs"][mb], batch["mask"][mb])
                vf_loss = torch.zeros(())
                loss = pg_loss + cfg.kl_coef * kl_loss
            else:
                kl_loss = torch.zeros(())
                vf_loss = value_loss(outputs[2], batch["values"][mb], batch["returns"][mb],  # PPO practice,
                                     batch["mask"][mb], cfg.vf_clip)                         # not in the paper
                loss = pg_loss + cfg.vf_coef * vf_loss
            if not distributed.agree(bool(torch.isfinite(loss))):  # every rank skips, or none does
                skipped += 1
                continue
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            distributed.all_reduce_grads(params)  # several ranks: the mean gradient, the same step on all
            scaler.unscale_(optimizer)  # the clip sees the true gradient
            nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            for name, value in (("pg_loss", pg_loss), ("vf_loss", vf_loss), ("kl_loss", kl_loss),
                                ("approx_kl", approx_kl), ("clipfrac", clipfrac)):
                stats[name].append(value.item())
    means = {name: sum(values) / max(len(values), 1) for name, values in stats.items()}
    return {**means, "skipped": skipped}

# --------------------------------------------------------------------------- 8. the loop ---

def ppo_loop(cfg: Config, agent, optimizer, cccs, problems: list, rng: random.Random, run: Run,
             start: int) -> None:
    """PPO steps start+1 .. cfg.steps, each in the method's order. Rank 0 writes the run directory."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    by_id = {p.problem_id: p for p in problems}
    run.stepping = True  # a signal now stops the run after the step in progress, saved (support/runs.py)
    for step in range(start + 1, cfg.steps + 1):
        run.progress.update(where=f"at step {step}", step=step)
        # 1-2. The schedule's ceiling lowers the stages training progress asks for; the step's problems are
        #      the next of the passes over the data, each samples_per_problem times: their CCCS prompts, then
        #      rollouts. Several ranks draw alike (one RNG and curriculum, the same on all), each takes its share.
        cccs.follow_schedule(step, cfg.steps)
        drawn = [by_id[problem_id] for problem_id in cccs.draw(cfg.problems_per_step, rng)]
        batch = [p for p in distributed.share(drawn) for _ in range(cfg.samples_per_problem)]
        rollouts = collect_rollouts(agent.sampler, agent.policy, agent.tok, batch, cccs, cfg, agent.device)
        # 3. Sandbox: verdicts and rewards (Eq. 3), executed lines; the curriculum moves.
        started = time.time()
        results, scored = score_rollouts(rollouts, cccs, cfg)
        seconds = {"t_generate": rollouts.seconds, "t_score": time.time() - started}
        # 4. The masks: b_mask (the response's actions) and b_fgo (FGO's kept tokens).
        b_mask, b_fgo = action_masks(rollouts, results, agent.tok, cfg.fgo)
        if distributed.is_main():
            show_rollouts(rollouts, results, b_fgo, cfg.show_rollouts)
            record_step(run.dir, step, rollouts, results, b_fgo, cccs, cfg)  # RUN/rollouts.html
        # 5-6. Log-probs over the update's minibatches, then the advantages: PPO's (values, KL-penalised rewards,
        #      GAE) or, with --algo grpo, GRPO's (each problem's samples a group; no values).
        started = time.time()
        minibatches = torch.randperm(len(batch), device=agent.device).split(cfg.minibatch_size)
        b = compute_advantages(agent.policy, agent.value_head, rollouts, results, b_mask, minibatches, cfg)
        b.update(ids=rollouts.ids, attn=rollouts.attention_mask, n_gen=rollouts.n_gen, mask=b_mask,
                 fgo=b_fgo)
        # 7. PPO update: a few epochs over the minibatches (GRPO: the KL a loss term, no value loss).
        stats = ppo_update(agent.policy, agent.value_head, optimizer, params, b, minibatches, cfg, agent.scaler)
        seconds["t_update"] = time.time() - started
        # 8. Log and checkpoint; after Ctrl-C or SIGTERM, checkpoint this step and stop (support/runs.py).
        metrics = step_metrics(step, rollouts, scored, b, stats, cccs, seconds)
        if distributed.is_main():
            log_step(run.dir, metrics, run.tensorboard)
        save = partial(save_checkpoint, run.dir, agent.policy, agent.value_head, optimizer, cccs, step, rng)
        if end_step(run, step, step % cfg.save_every == 0 or step == cfg.steps, save):
            raise stopped(run)
    run.stepping = False


def train(cfg: Config):
    """The whole run; returns (run directory, policy, value head) for tests and notebooks. Ctrl-C and SIGTERM
    raise Interrupted, which says where the run stopped and how to continue it: in the PPO loop after the
    step in progress, saved (support/runs.py: catch_stop_signals). Under torchrun each process is one
    data-parallel rank (support/distributed.py): rank 0 alone writes the run directory and prints."""
    started = time.time()
    quiet_libraries()
    problems = curriculum.load_problems(cfg.data)
    distributed.share(problems[:cfg.problems_per_step])  # several ranks: an uneven split is refused at once
    device = distributed.init()  # the GPU, or the CPU; several ranks: joins the process group
    memory.check_gpu(cfg, device)  # on CUDA: settings that fit its free memory, before the weights load
    sft_problems = curriculum.load_problems(cfg.sft_data) if cfg.sft_data else problems  # the warm start's
    evals = evaluation.problem_sets(cfg, problems)  # --eval: pass@1 on the training problems and on held-out ones
    run, start, resuming, handlers = open_run(cfg)  # support/runs.py: checked, a crash's checkpoint recovered
    try:
        agent = load_agent(cfg, sft_problems, run, device, resuming)  # (it seeds torch with --seed)
        rng = random.Random(cfg.seed)  # RL's own: problem draws
        optimizer = make_optimizer(agent, cfg)
        cccs = curriculum.Curriculum(problems, alpha=cfg.cccs_alpha, rho_t=cfg.cccs_threshold,
                                     enabled=cfg.cccs, plain_fraction=cfg.cccs_plain_fraction)
        if resuming:  # every rank: the same adapter, value head, optimizer, curriculum, and rank 0's RNG
            start = load_checkpoint(run.dir / "checkpoint", agent.value_head, optimizer, cccs, rng)
        elif distributed.is_main():  # step 0: the warm start's result, so an interrupted run never redoes it
            save_checkpoint(run.dir, agent.policy, agent.value_head, optimizer, cccs, 0, rng)
            (run.dir / "warm_start.pt").unlink(missing_ok=True)
        distributed.own_rng()  # rank r > 0: its own sampling stream (support/distributed.py says how)
        run.progress["saved"] = f"step {start}"
        if distributed.is_main():
            tqdm.write(display.budget(len(problems), cfg.steps, cfg.problems_per_step, cfg.samples_per_problem,
                                      cccs.enabled, cccs.plain_fraction, start, set(cccs.stages.values()) == {0}))
            keep_metrics_until(run.dir / "metrics.jsonl", start)
            keep_page_until(run.dir, start)
            run.tensorboard = open_tensorboard(run.dir, cfg.tensorboard)
        if cfg.eval and start == 0 and not (run.dir / "eval_step0.json").exists():
            evaluation.run_evaluation(agent, evals, cfg, run, 0)  # (--steps 0: the warm start alone)
        ppo_loop(cfg, agent, optimizer, cccs, problems, rng, run, start)
        if cfg.eval and cfg.steps > 0:
            evaluation.run_evaluation(agent, evals, cfg, run, cfg.steps)
    except KeyboardInterrupt:
        raise interrupted(run) from None
    finally:
        restore_signals(handlers)
    if distributed.is_main():
        plot_run(run.dir)
        write_page(run.dir)  # after the last evaluation
        tqdm.write(summary(run.dir, time.time() - started))
    distributed.finish()
    return run.dir, agent.policy, agent.value_head


# -------------------------------------------------------------------------- command line ---

def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
        if cfg.memory_plan:  # the memory plan on paper, and stop: nothing loads or is written
            print(memory.report(cfg))
            return 0
        train(cfg)
    except (UsageError, curriculum.DataError, Interrupted, NotImplementedError, KeyboardInterrupt,
            torch.cuda.OutOfMemoryError) as e:
        return exit_code(e)  # support/runs.py: one line on stderr, and the exit status
    return 0


if __name__ == "__main__":
    sys.modules["stepcoder"] = sys.modules[__name__]  # support/evaluation.py's `import stepcoder`: this module, not a second copy
    sys.exit(main())
