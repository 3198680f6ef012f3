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
            "outputs_match": outputs_match_variant}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_meta_variants_without_the_bug_pass(name):
    """Each wrong answer is a right one plus its bug: without the bug, the check passes. This also
    checks the hand-computed values against an implementation written independently of the project."""
    CHECKS[name](VARIANTS[name](None))
