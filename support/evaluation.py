"""pass@1 and pass@k before and after RL, with full generation (CCCS stage 0): not the method. stepcoder.py's
`train` calls `run_evaluation` after the warm start and after the last step (--eval; tiny: on), e.g.
    python3 stepcoder.py --model deepseek-coder-1.3b --eval --test-data humaneval

Each problem at stage 0, decoded greedily and --eval-samples times at --eval-temperature with stepcoder.py's
sampling and sandbox; per difficulty and overall: pass@1, greedy's pass rate, the mean reward (Eq. 3), and
pass@k by Chen et al. 2021's unbiased estimator (`pass_at_k`) with 95% intervals over problems (`interval95`,
the normal approximation), into RUN/eval_step<N>.json.
"""
import json, math, statistics
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

import curriculum, sandbox
from curriculum import fit_prompt
from support import distributed
from support.config import Config
from support.models import refresh_sampler
from support.runs import Run, write_atomically


def problem_sets(cfg: Config, problems: list) -> dict:
    """What --eval evaluates: "train", the training problems; "test", --test-data's (unless it is --data)."""
    evals = {"train": problems}
    if cfg.eval and Path(cfg.test_data).resolve() != Path(cfg.data).resolve():
        evals["test"] = curriculum.load_problems(cfg.test_data)
    return evals


def run_evaluation(agent, evals: dict, cfg: Config, run: Run, step: int) -> None:
    """pass@1 at stage 0 on each problem set (held-out ones greedily, unless --eval-test-sampled), into
    eval_step<N>.json; rank 0 alone. Its own RNG, seeded with 0 at every evaluation of every run: a run
    with --eval trains exactly as one without, and all evaluations share their random numbers (a change
    is the model's, not the draw's)."""
    if not distributed.is_main():
        return
    run.progress["where"] = f"during the evaluation at step {step}"
    refresh_sampler(agent.sampler, agent.policy)
    report = {}
    with torch.random.fork_rng(devices=[agent.device] if agent.device.type == "cuda" else []):
        torch.manual_seed(0)
        for split, problems in evals.items():
            sampled = split == "train" or cfg.eval_test_sampled
            settings = cfg if sampled else replace(cfg, eval_temperature=0.0)
            report[split] = evaluate(agent, problems, settings, f"step {step}, {split}")
    write_atomically(run.dir / f"eval_step{step}.json", json.dumps(report, indent=1))  # whole, or not at all


def evaluate(agent, problems: list, cfg: Config, tag: str) -> dict:
    """pass@1 at stage 0 (no canonical prefix), per difficulty and overall: the mean pass rate of
    --eval-samples samples per problem at --eval-temperature (Chen et al. 2021's unbiased estimate
    for k = 1), their mean reward (Eq. 3: on fixed problems, unlike the rollouts' under CCCS), and
    greedy decoding's pass rate ("greedy"); pass@k with 95% intervals (`pass_at_ks`) from the samples,
    or from the greedy decode without them; "problems": each problem's pass rates and passing samples.
    A sample the sandbox failed on (sandbox_error: no verdict) is left out of its problem's samples (its
    pass@k from the samples judged) and counted in "sandbox_errors", shown only where there are some."""
    import stepcoder  # its prompts, sampling and sandbox (here, as stepcoder.py imports this module)
    tok = agent.tok
    starts = [stepcoder.prompt_prefix(curriculum.program_prefix(p, "", tok)) for p in problems]  # HumanEval, base: its prompt
    prompts = [fit_prompt(tok, p, start, cfg.max_prompt_tokens)[0] for p, start in zip(problems, starts)]
    order = sorted(range(len(problems)), key=lambda i: len(prompts[i]))  # similar lengths pad less
    problems = [problems[i] for i in order]
    starts = [starts[i] for i in order]
    ids, attention_mask = stepcoder.tokenize_prompts(tok, [prompts[i] for i in order], agent.device)
    decodings = [("greedy", 0.0, 1)]
    if cfg.eval_temperature > 0:
        decodings.append(("pass@1", cfg.eval_temperature, cfg.eval_samples))
    rewards = {d: {} for d in ("overall", *curriculum.DIFFICULTIES)}  # difficulty -> decoding -> rewards
    passed = {str(p.problem_id): {} for p in problems}               # problem -> decoding -> passing samples
    judged = {str(p.problem_id): {} for p in problems}               # problem -> decoding -> samples judged
    errors = dict.fromkeys(rewards, 0)                                # difficulty -> samples not judged
    for key, temperature, n in decodings:
        responses, _ = stepcoder.generate(agent.sampler, tok, ids.repeat_interleave(n, 0),
                                          attention_mask.repeat_interleave(n, 0), cfg.max_new_tokens, temperature,
                                          cfg.eval_top_p, cfg.gen_batch_size, f"eval {tag}, {key}")
        programs = [start + stepcoder.program_text(tok, row) for start, row in zip(
            (start for start in starts for _ in range(n)), responses.tolist())]
        samples = [p for p in problems for _ in range(n)]
        for p, result in zip(samples, stepcoder.sandbox_results(programs, samples, cfg)):
            for difficulty in (p.difficulty, "overall"):
                if result.status == sandbox.SANDBOX_ERROR:
                    errors[difficulty] += 1
                else:
                    rewards[difficulty].setdefault(key, []).append(result.reward)
            if result.status != sandbox.SANDBOX_ERROR:
                counts, seen = passed[str(p.problem_id)], judged[str(p.problem_id)]
                counts[key] = counts.get(key, 0) + (result.reward == 1.0)
                seen[key] = seen.get(key, 0) + 1
    key, _, n = decodings[-1]  # pass@k: from the samples, else from the greedy decode (n = 1)
    report = {}
    for d, by_decoding in rewards.items():
        mine = [pid for pid, p in zip(judged, problems) if d in (p.difficulty, "overall") and key in judged[pid]]
        if "greedy" in by_decoding and mine:
            report[d] = pass_rates(by_decoding) | pass_at_ks([passed[pid][key] for pid in mine],
                                                             [judged[pid][key] for pid in mine])
            report[d] |= {"sandbox_errors": errors[d]} if errors[d] else {}
    report["problems"] = {pid: {decoding: c / judged[pid][decoding] for decoding, c in counts.items()}
                          | {"passed": counts.get(key, 0)}  # pass@k recomputes from it (pass_at_k(n, passed, k))
                          | ({"judged": judged[pid].get(key, 0)} if judged[pid].get(key, 0) != n else {})
                          for pid, counts in passed.items()}  # bench/ablations.py: problems the warm start never solves
    tqdm.write(f"pass@1 ({tag})  " + "  ".join(
        f"{d}: {v['pass@1']:.3f} (greedy {v['greedy']:.3f}, reward {v['reward']:+.3f}, n={v['n']})"
        for d, v in report.items() if d != "problems"))
    return report


def pass_rates(by_decoding: dict) -> dict:
    """decoding -> rewards  ->  pass@1 and mean reward of the samples (greedy's without samples), greedy's
    pass rate, and the number of problems."""
    sampled = by_decoding.get("pass@1", by_decoding["greedy"])
    greedy = by_decoding["greedy"]
    return {"pass@1": sampled.count(1.0) / len(sampled), "reward": sum(sampled) / len(sampled),
            "greedy": greedy.count(1.0) / len(greedy), "n": len(greedy)}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chen et al. 2021's unbiased estimate of pass@k from n samples of which c pass: 1 - C(n-c, k) / C(n, k),
    as their product 1 - prod_{i = n-c+1..n} (1 - k / i) (no large binomials)."""
    if not 1 <= k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every draw of k samples holds a passing one
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def interval95(values: list[float]) -> list[float]:
    """A 95% interval for the mean of per-problem values, by the normal approximation: mean +- 1.96 *
    sd / sqrt(problems) (sd with the n - 1 denominator), clipped to [0, 1]. Its spread is the problems',
    as a new draw of problems would vary the mean. One problem gives no spread: [0, 1]."""
    if len(values) < 2:
        return [0.0, 1.0]
    mean, half = statistics.mean(values), 1.96 * statistics.stdev(values) / math.sqrt(len(values))
    return [max(0.0, mean - half), min(1.0, mean + half)]


def pass_at_ks(passed: list[int], n: int | list[int]) -> dict:
    """Each problem's passing samples of n -> "pass@k" for k = 1, the powers of 2 up to n, and n (the mean
    over problems of `pass_at_k`), "ci95": the 95% intervals over problems of pass@1 and pass@n
    (`interval95`), and "samples": n. `n` may be each problem's own (samples judged, evaluate): then n is
    their largest, and pass@k a mean over the problems with k samples or more."""
    each = n if isinstance(n, list) else [n] * len(passed)
    n = max(each)
    ks = sorted({1, n, *(2 ** j for j in range(n.bit_length()))})
    per_problem = {k: [pass_at_k(m, c, k) for m, c in zip(each, passed) if m >= k] for k in ks}
    return {"pass@k": {str(k): statistics.mean(values) for k, values in per_problem.items()},
            "ci95": {f"pass@{k}": interval95(per_problem[k]) for k in (1, n)}, "samples": n}
