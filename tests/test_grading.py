"""The answer key of docs/ASSIGNMENTS.md: the meta-tests prove that every check of tests/grading.py
fails for a body of `raise NotImplementedError` and for the usual wrong answers, written out below
(each a right answer plus one plausible bug). Students: grade first (tests/test_assignments.py).
"""
import importlib
import math

import pytest
import torch

from grading import CHECKS

# Each wrong answer below is a small, plausible mistake. The meta-tests use the checks above and
# these functions; of the project's code only Curriculum's constructor and, for the wrong
# stage_prefixes, split_points.

def not_implemented(*args, **kwargs):
    raise NotImplementedError


def gae_variant(bug):
    def gae(rewards, values, mask, gamma, lam):
        if bug == "gamma_lam_swapped":
            gamma, lam = lam, gamma
        adv = torch.zeros_like(rewards)
        next_adv, next_value = torch.zeros_like(rewards[:, 0]), torch.zeros_like(rewards[:, 0])
        for i in reversed(range(rewards.shape[1])):
            v_next = values[:, i] if bug == "bootstrap_from_values_t" else next_value
            delta = rewards[:, i] + gamma * v_next - values[:, i]
            next_adv = delta + (gamma if bug == "no_lambda" else gamma * lam) * next_adv
            if bug != "padding_leaks":
                next_adv = next_adv * mask[:, i]
            next_value = values[:, i] if bug == "padding_leaks" else values[:, i] * mask[:, i]
            adv[:, i] = next_adv
        return adv, adv if bug == "returns_without_values" else adv + values
    return gae


def gae_forward_time(rewards, values, mask, gamma, lam):  # accumulates in the wrong direction
    adv = torch.zeros_like(rewards)
    prev = torch.zeros_like(rewards[:, 0])
    G = rewards.shape[1]
    for i in range(G):
        v_next = values[:, i + 1] * mask[:, i + 1] if i + 1 < G else torch.zeros_like(prev)
        prev = (rewards[:, i] + gamma * v_next - values[:, i] + gamma * lam * prev) * mask[:, i]
        adv[:, i] = prev
    return adv, adv + values


def policy_loss_variant(bug):
    def policy_loss(logprobs, old_logprobs, advantages, mask, clip_coef):
        logratio = logprobs - old_logprobs
        ratio = logratio.exp()
        l1 = -advantages * ratio
        l2 = -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef)
        per_token = {"min_instead_of_max": torch.min(l1, l2), "unclipped": l1,
                     "clipped_only": l2}.get(bug, torch.max(l1, l2))
        if bug == "no_minus_sign":
            per_token = -per_token
        m = torch.ones_like(mask) if bug == "mean_over_all_tokens" else mask
        loss = (per_token * m).sum() / m.sum()
        if bug == "sum_not_mean":
            loss = (per_token * m).sum()
        approx_kl = ((ratio - 1 - logratio) * m).sum() / m.sum()
        clipfrac = (((ratio - 1).abs() > clip_coef).float() * m).sum() / m.sum()
        return loss, ratio, approx_kl.detach(), clipfrac
    return policy_loss


def value_loss_variant(bug):
    def value_loss(values, old_values, returns, mask, vf_clip):
        centre = returns if bug == "clip_around_returns" else old_values
        v_clipped = centre + (values - centre).clamp(-vf_clip, vf_clip)
        a, b = (values - returns) ** 2, (v_clipped - returns) ** 2
        per_token = {"unclipped": a, "min_instead_of_max": torch.min(a, b)}.get(bug, torch.max(a, b))
        m = torch.ones_like(mask) if bug == "mean_over_all_tokens" else mask
        half = 1.0 if bug == "no_half" else 0.5
        return half * (per_token * m).sum() / m.sum()
    return value_loss


def fgo_variant(bug):
    def fgo_mask(token_ends, text, first_line, executed_lines, eos_index):
        if executed_lines is None:
            return [0.0 if bug == "mask_all_on_compile_error" else 1.0] * len(token_ends)
        if bug == "keep_unexecuted":
            return [1.0] * len(token_ends)
        if bug == "lines_from_prompt_start":  # numbers lines as if the text started the program
            first_line = 1
        out, start = [], 0
        for i, end in enumerate(token_ends):
            chars = range(start, min(end, len(text)))
            if bug == "first_char_only":
                chars = chars[:1]
            if bug == "newline_on_next_line":  # a "\n" counted on the line it starts
                lines = {first_line + text[:j + 1].count("\n") for j in chars}
            else:
                lines = {first_line + text[:j].count("\n") for j in chars}
            keep = bool(lines & executed_lines) or (i == eos_index and bug != "mask_eos")
            out.append(1.0 if keep else 0.0)
            start = end
        return out
    return fgo_mask


def kl_variant(bug):
    def kl_penalized_rewards(logprobs, ref_logprobs, scores, mask, kl_coef):
        kl = logprobs - ref_logprobs
        if bug == "sign_flipped":
            kl = -kl
        if bug != "no_mask":
            kl = kl * mask
        rewards = -kl_coef * kl
        last = torch.full_like(scores, rewards.shape[1] - 1).long() if bug == "score_on_last_column" \
            else mask.sum(1).long() - 1
        if bug == "score_on_every_token":
            rewards = rewards + scores[:, None] * mask
        else:
            rewards[torch.arange(len(scores)), last] += scores
        return rewards, kl
    return kl_penalized_rewards


def split_points_variant(bug):
    import ast
    import re

    def split_points(code):
        if bug == "regex_on_lines":
            return [n for n, line in enumerate(code.splitlines(), 1)
                    if re.match(r"\s*(if|elif|for|while|async\s+for)\b", line)]
        if bug == "counts_else":  # the right lines, plus every `else:`
            return sorted(split_points_variant(None)(code) + [n for n, line in enumerate(code.splitlines(), 1)
                                                             if re.match(r"\s*else\s*:", line)])
        kinds = [ast.If, ast.For, ast.AsyncFor, ast.While]
        if bug == "no_async_for":
            kinds.remove(ast.AsyncFor)
        if bug == "counts_ternaries":
            kinds.append(ast.IfExp)
        lines = [node.lineno for node in ast.walk(ast.parse(code)) if isinstance(node, tuple(kinds))]
        if bug == "counts_comprehension_ifs":
            lines += [cond.lineno for node in ast.walk(ast.parse(code)) if isinstance(node, ast.comprehension)
                      for cond in node.ifs]
        if bug == "zero_based":
            lines = [n - 1 for n in lines]
        return lines if bug == "walk_order_not_sorted" else sorted(set(lines))
    return split_points


def stage_prefixes_variant(bug):
    def stage_prefixes(code):
        points = importlib.import_module("curriculum").split_points(code)
        lines = code.splitlines(keepends=True)
        if not points:
            return [""]
        E = len(points)
        K = math.floor(math.sqrt(E)) if bug == "K_floor" else math.ceil(math.sqrt(E))
        S = max(1, E // K) if bug == "S_floor" else math.ceil(E / K)
        index = (lambda c: min(S * c, E - 1)) if bug == "index_S_times_c" else (lambda c: S * (c - 1))
        keep = 0 if bug != "includes_split_line" else 1
        stages = ["".join(lines[:points[index(c)] - 1 + keep]) for c in range(K, 0, -1)]
        if bug == "hardest_first":
            return [""] + stages[::-1]
        return stages if bug == "no_stage_0" else stages + [""]
    return stage_prefixes


def update_variant(bug):
    def update(self, problem_id, passed, stage=None):
        c = self.stages[problem_id]
        if c == 0 and bug != "moves_past_0" or (stage is not None and stage != c and bug != "ignores_stale"):
            return False
        a = 1 - self.alpha if bug == "alpha_swapped" else self.alpha
        self.rho[problem_id] = a * float(passed) + (1 - a) * self.rho[problem_id]
        above = self.rho[problem_id] >= self.rho_t if bug == "ge_threshold" else self.rho[problem_id] > self.rho_t
        if above:
            self.stages[problem_id] = c + 1 if bug == "toward_harder" else c - 1
            if bug != "no_rho_reset":
                self.rho[problem_id] = 0.0
            return True
        return False
    return update


def outputs_match_variant(bug):
    import re

    def outputs_match(got, want):
        if bug == "exact_string":
            return got == want
        if bug == "strip_only":
            return got.strip() == want.strip()
        a, b = got.split(), want.split()
        if bug == "lowercase":
            a, b = [x.lower() for x in a], [x.lower() for x in b]
        if bug == "sorted":
            a, b = sorted(a), sorted(b)
        if bug == "set":
            return set(a) == set(b)
        if bug == "zip_without_length":  # zip stops at the shorter list
            return all(x == y for x, y in zip(a, b))
        tol = 1e-3 if bug == "loose_tolerance" else 1e-6

        def num(x):
            if bug != "float_everything" and not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", x):
                return None
            try:
                return float(x)
            except ValueError:
                return None
        def integers(x, y):
            return bug != "integer_tolerance" and re.fullmatch(r"[+-]?\d+", x) and re.fullmatch(r"[+-]?\d+", y)
        return a == b or bug != "tokens_only" and len(a) == len(b) and all(
            x == y or num(x) is not None and num(y) is not None and (int(x) == int(y) if integers(x, y) else
                                                                     math.isclose(num(x), num(y), rel_tol=tol, abs_tol=tol))
            for x, y in zip(a, b))
    return outputs_match


def logprobs_and_values_variant(bug):
    def logprobs_and_values(policy, value_head, input_ids, attention_mask, n_gen, temperature):
        position_ids = None if bug == "positions_ignore_padding" else (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                     output_hidden_states=value_head is not None, use_cache=False)
        logits = out.logits[:, -n_gen:] if bug == "logits_at_the_token" else out.logits[:, -n_gen - 1:-1]
        tokens = input_ids[:, -n_gen - 1:-1] if bug == "tokens_one_early" else input_ids[:, -n_gen:]
        logp_all = torch.log_softmax(logits.float() / (1.0 if bug == "no_temperature" else temperature), -1)
        logprobs = logp_all.gather(-1, tokens[..., None]).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        if bug == "detached":
            logprobs = logprobs.detach()
        if value_head is None:
            return logprobs, entropy
        hidden = out.hidden_states[-1]
        hidden = hidden[:, -n_gen:] if bug == "value_at_the_token" else hidden[:, -n_gen - 1:-1]
        return logprobs, entropy, value_head(hidden.float()).squeeze(-1)
    return logprobs_and_values


def whiten_variant(bug):
    def whiten(x, mask):
        if bug == "per_row":
            n = mask.sum(1, keepdim=True).clamp(min=1)
            mean = (x * mask).sum(1, keepdim=True) / n
            var = (((x - mean) * mask) ** 2).sum(1, keepdim=True) / n
            return (x - mean) / torch.sqrt(var + 1e-8) * mask
        weights = torch.ones_like(mask) if bug == "over_padding" else mask
        count = torch.tensor(float(mask.numel())) if bug == "mean_over_all_entries" else weights.sum().clamp(min=1)
        mean = (x * weights).sum() / count
        var = ((x - mean) ** 2 * weights).sum() / count
        scale = 1.0 / var if bug == "divide_by_variance" else 1.0 / torch.sqrt(var if bug == "no_epsilon" else var + 1e-8)
        out = (x - mean) * scale
        return out if bug == "padding_not_zeroed" else out * mask
    return whiten


FENCE = "```"


def response_length_variant(bug):
    def response_length(tok, ids):
        eos = tok.eos_token_id
        n = ids.index(eos) + (0 if bug == "eos_not_an_action" else 1) if eos in ids else len(ids)
        if not tok.chat_template or bug == "chat_like_base":
            return n
        if bug == "fence_as_one_token":  # looks for a token that holds the whole fence
            return next((i for i, token in enumerate(ids[:n]) if FENCE in tok.decode([token])), n)
        pieces = [tok.decode([i], skip_special_tokens=True) for i in (ids if bug == "fence_after_eos" else ids[:n])]
        ends = [sum(len(p) for p in pieces[:k + 1]) for k in range(len(pieces))]
        fence = "".join(pieces).find(FENCE)
        if fence < 0:
            return n
        if bug == "fence_token_is_an_action":
            return next(i for i, end in enumerate(ends) if end > fence) + 1
        return next(i for i, end in enumerate(ends) if end >= fence) + 1
    return response_length


def program_text_variant(bug):
    def program_text(tok, ids):
        if tok.eos_token_id in ids and bug != "text_after_eos":
            ids = ids[:ids.index(tok.eos_token_id)]
        if bug == "actions_only":  # the actions' text: the token holding the program's end may hold backticks
            ids = ids[:response_length_variant(None)(tok, ids)]
        if bug == "fence_as_one_token" and tok.chat_template:
            ids = ids[:next((i for i, token in enumerate(ids) if tok.decode([token]) == FENCE), len(ids))]
            return tok.decode(ids, skip_special_tokens=True)
        text = tok.decode(ids, skip_special_tokens=True)
        return text.split(FENCE)[0] if tok.chat_template or bug == "fence_in_base_model" else text
    return program_text


def group_advantages_variant(bug):
    def group_advantages(scores, group_size, mask, eps=1e-4):
        if bug == "over_tokens":  # each token a sample: rows with more tokens weigh more
            tokens = scores[:, None].expand_as(mask)
            groups, weights = tokens.reshape(-1, group_size * mask.shape[1]), mask.reshape(-1, group_size * mask.shape[1])
            n = weights.sum(1, keepdim=True)
            mean = (groups * weights).sum(1, keepdim=True) / n
            std = (((groups - mean) ** 2 * weights).sum(1, keepdim=True) / (n - 1)).sqrt()
            return ((groups - mean) / (std + eps) * weights).reshape(mask.shape)
        groups = scores.view(1, -1) if bug == "whole_batch" else scores.view(-1, group_size)
        mean = torch.zeros_like(groups[:, :1]) if bug == "no_mean" else groups.mean(1, keepdim=True)
        spread = groups.var(1, keepdim=True) if bug == "divide_by_variance" else \
            groups.std(1, keepdim=True, unbiased=bug != "population_std")
        advantages = ((groups - mean) / (spread + (0.0 if bug == "no_epsilon" else eps))).reshape(-1)
        return advantages[:, None].expand_as(mask).clone() if bug == "padding_leaks" else advantages[:, None] * mask
    return group_advantages


WRONG = [("compute_gae", bug, gae_variant(bug)) for bug in
         ("bootstrap_from_values_t", "padding_leaks", "gamma_lam_swapped", "no_lambda", "returns_without_values")]
WRONG += [("compute_gae", "forward_in_time", gae_forward_time)]
WRONG += [("policy_loss", bug, policy_loss_variant(bug)) for bug in
          ("min_instead_of_max", "unclipped", "clipped_only", "no_minus_sign", "mean_over_all_tokens", "sum_not_mean")]
WRONG += [("value_loss", bug, value_loss_variant(bug)) for bug in
          ("unclipped", "min_instead_of_max", "clip_around_returns", "mean_over_all_tokens", "no_half")]
WRONG += [("fgo_mask", bug, fgo_variant(bug)) for bug in
          ("keep_unexecuted", "mask_eos", "mask_all_on_compile_error", "lines_from_prompt_start",
           "first_char_only", "newline_on_next_line")]
WRONG += [("kl_penalized_rewards", bug, kl_variant(bug)) for bug in
          ("sign_flipped", "no_mask", "score_on_last_column", "score_on_every_token")]
WRONG += [("split_points", bug, split_points_variant(bug)) for bug in
          ("regex_on_lines", "counts_else", "no_async_for", "counts_ternaries", "counts_comprehension_ifs",
           "zero_based", "walk_order_not_sorted")]
WRONG += [("stage_prefixes", bug, stage_prefixes_variant(bug)) for bug in
          ("K_floor", "S_floor", "index_S_times_c", "includes_split_line", "hardest_first", "no_stage_0")]
WRONG += [("curriculum_update", bug, update_variant(bug)) for bug in
          ("toward_harder", "no_rho_reset", "moves_past_0", "ignores_stale", "alpha_swapped", "ge_threshold")]
WRONG += [("outputs_match", bug, outputs_match_variant(bug)) for bug in
          ("exact_string", "strip_only", "lowercase", "sorted", "set", "zip_without_length", "loose_tolerance",
           "tokens_only", "float_everything", "integer_tolerance")]
WRONG += [("logprobs_and_values", bug, logprobs_and_values_variant(bug)) for bug in
          ("logits_at_the_token", "tokens_one_early", "value_at_the_token", "positions_ignore_padding",
           "no_temperature", "detached")]
WRONG += [("whiten", bug, whiten_variant(bug)) for bug in
          ("over_padding", "padding_not_zeroed", "no_epsilon", "per_row", "mean_over_all_entries",
           "divide_by_variance")]
WRONG += [("response_length", bug, response_length_variant(bug)) for bug in
          ("eos_not_an_action", "chat_like_base", "fence_token_is_an_action", "fence_as_one_token",
           "fence_after_eos")]
WRONG += [("program_text", bug, program_text_variant(bug)) for bug in
          ("actions_only", "text_after_eos", "fence_as_one_token", "fence_in_base_model")]
WRONG += [("group_advantages", bug, group_advantages_variant(bug)) for bug in
          ("whole_batch", "over_tokens", "no_mean", "divide_by_variance", "padding_leaks", "population_std",
           "no_epsilon")]


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_meta_not_implemented_fails(name):
    with pytest.raises(NotImplementedError):
        CHECKS[name](not_implemented)


@pytest.mark.parametrize("name,bug,fn", WRONG, ids=[f"{name}-{bug}" for name, bug, _ in WRONG])
def test_meta_wrong_answer_fails(name, bug, fn):
    with pytest.raises(AssertionError):
        CHECKS[name](fn)


VARIANTS = {"compute_gae": gae_variant, "policy_loss": policy_loss_variant, "value_loss": value_loss_variant,
            "fgo_mask": fgo_variant, "kl_penalized_rewards": kl_variant, "split_points": split_points_variant,
            "stage_prefixes": stage_prefixes_variant, "curriculum_update": update_variant,
            "outputs_match": outputs_match_variant, "logprobs_and_values": logprobs_and_values_variant,
            "whiten": whiten_variant, "response_length": response_length_variant,
            "program_text": program_text_variant, "group_advantages": group_advantages_variant}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_meta_variants_without_the_bug_pass(name):
    """Each wrong answer is a right one plus its bug: without the bug, the check passes. This also
    checks the hand-computed values against an implementation written independently of the project."""
    CHECKS[name](VARIANTS[name](None))
