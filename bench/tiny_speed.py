"""Is the default tiny run under 10 minutes, and what do the trainer's speed-ups buy? (CPU)

    python3 bench/tiny_speed.py          # the six speed-ups, each against its baseline, ~5 min
    python3 bench/tiny_speed.py --full   # and `python3 stepcoder.py --model tiny` end to end, twice: 20-25 min

Measured in the same run, with the tiny model:
  1. generate: the trainer's `decode`, where a row that wrote EOS leaves the batch with its KV cache
     rows, against transformers' `generate` with a static KV cache (the trainer before 2026-12-02),
     which computes every row until the last one ends; with the tiny model after 100 warm-start
     steps (so that rows end): 32 rollouts at the rollout's settings, and 16 problems x 8 samples at
     the evaluation's. Greedy, both must decode the same tokens. (The sections below use random weights.)
  2. evaluation: 16 problems x 8 samples (the evaluation's settings) generated 64 at a time (tiny's
     gen_batch_size; a step's 32 rollouts are one batch either way) against 32 at a time.
  3. PPO forwards: a rollout batch is right-padded to its longest response; `forward` drops the
     columns every row of a minibatch pads (`drop_shared_padding`) against computing them. 32
     rollouts, one 160 tokens long, the others 20-100 (as in the default run's steps), minibatches
     of 8 in random order: the no-grad pass (old log-probs, reference) and the update's
     forward + backward. Both must give the same log-probs.
  3b. the PPO forwards of a default step's 32 rollouts (16 problems x 2) with each minibatch's rows run in
     length-sorted groups (--rows-per-forward, tiny: 2) against one forward per minibatch; and five
     warm-start steps the same two ways. Both must give the same log-probs / loss.
  4. log-probs and entropy of the update's forward + backward in chunks of positions, recomputed in
     the backward pass (the trainer: less memory), against one log_softmax over all positions.
  5. generate from the merged sampler (a plain copy holding base + LoRA merged) against the policy's
     LoRA layers: 32 prompts, greedy; both must decode the same tokens.
  6. --full: the default command against the same with --sampler policy, and against the 600 s target
     (> 1: under it), with the pass@1 lines each printed.
Ratios > 1 mean the trainer's way is faster. Timings: the median of 3 repeats, alternating.
"""
import argparse, dataclasses, os, random, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import curriculum, stepcoder  # noqa: E402
from support import models  # noqa: E402


def compare(baseline, trainer, repeats=3):
    """Median seconds of each, the repeats alternating (a busy host slows both alike); their last outputs."""
    times, outs = ([], []), [None, None]
    for _ in range(repeats):
        for k, fn in enumerate((baseline, trainer)):
            t0 = time.perf_counter()
            outs[k] = fn()
            times[k].append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1]), *outs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also time the default command end to end")
    args = parser.parse_args()
    cfg = stepcoder.parse_config(["--model", "tiny"])
    problems = curriculum.load_problems(os.path.join(ROOT, "data/train.json"))
    tok, model = models.build_tiny(problems, seed=0)
    policy, value_head = models.add_adapter(model, cfg)
    policy.eval()
    rng = random.Random(0)
    batch = [p for p in rng.sample(problems, 8) for _ in range(4)]
    ids, am = stepcoder.tokenize_prompts(tok, [curriculum.build_prompt(p, tok) for p in batch], "cpu")

    # 1. generate: `decode`, where a row that wrote EOS leaves the batch, against transformers' `generate`
    #    with a static KV cache (the trainer before 2026-12-02), which computes every row until the last
    #    one ends. Rows must end: the tiny model after a short warm start (100 steps), which ends its programs.
    warm_cfg = dataclasses.replace(cfg, sft_steps=100)
    _, warm = models.build_tiny(problems, seed=0)
    with tempfile.TemporaryDirectory() as scratch:
        models.warm_start(warm, tok, problems, warm_cfg, random.Random(0), "cpu", Path(scratch) / "warm_start.pt")
    def transformers_generate(prompt_ids, prompt_mask, temperature, top_p):
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature > 0 else dict(do_sample=False)
        out = [warm.generate(input_ids=prompt_ids[i:i + cfg.gen_batch_size], attention_mask=prompt_mask[i:i + cfg.gen_batch_size],
                             max_new_tokens=cfg.max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                             cache_implementation="static", disable_compile=True, **sampling)[:, prompt_ids.shape[1]:]
               for i in range(0, len(prompt_ids), cfg.gen_batch_size)]
        return out  # a list: one tensor per batch
    def trainer_generate(prompt_ids, prompt_mask, temperature, top_p):
        return stepcoder.generate(warm, tok, prompt_ids, prompt_mask, cfg.max_new_tokens, temperature, top_p, cfg.gen_batch_size, "decode")[0]
    greedy_theirs, greedy_ours = transformers_generate(ids, am, 0.0, 1.0)[0], trainer_generate(ids, am, 0.0, 1.0)
    assert greedy_ours.tolist() == greedy_theirs.tolist(), "decode and generate differ (greedy)"
    t_hf, t_ours, _, sampled = compare(lambda: transformers_generate(ids, am, cfg.temperature, cfg.top_p),
                                       lambda: trainer_generate(ids, am, cfg.temperature, cfg.top_p))
    mean_length = (sampled != tok.pad_token_id).sum(1).float().mean()
    print(f"generate 32 rollouts (T {cfg.temperature}, up to {cfg.max_new_tokens} tokens, mean {mean_length:.0f}): transformers' "
          f"generate {t_hf:.2f} s, decode (finished rows leave) {t_ours:.2f} s, ratio {t_hf / t_ours:.2f}x")
    e_prompts = [curriculum.build_prompt(p, tok) for p in sorted(problems, key=lambda p: len(curriculum.build_prompt(p, tok)))[:16]]
    e_ids, e_am = stepcoder.tokenize_prompts(tok, e_prompts, "cpu")
    e_ids, e_am = e_ids.repeat_interleave(8, 0), e_am.repeat_interleave(8, 0)
    t_hf, t_ours, _, _ = compare(lambda: transformers_generate(e_ids, e_am, cfg.eval_temperature, cfg.eval_top_p),
                                 lambda: trainer_generate(e_ids, e_am, cfg.eval_temperature, cfg.eval_top_p))
    print(f"evaluation, 16 problems x 8 samples ({cfg.gen_batch_size} at a time): transformers' generate {t_hf:.2f} s, "
          f"decode {t_ours:.2f} s, ratio {t_hf / t_ours:.2f}x")

    # 2. evaluation: 16 problems x 8 samples, generated 32 or 64 (tiny's gen_batch_size) at a time.
    by_length = sorted(range(16), key=lambda i: len(curriculum.build_prompt(problems[i], tok)))
    e_ids, e_am = stepcoder.tokenize_prompts(tok, [curriculum.build_prompt(problems[i], tok) for i in by_length], "cpu")
    def gen_eval(size):
        torch.manual_seed(0)
        return stepcoder.generate(policy, tok, e_ids.repeat_interleave(8, 0), e_am.repeat_interleave(8, 0),
                                  cfg.max_new_tokens, cfg.eval_temperature, cfg.eval_top_p, size, f"evaluate ({size} at a time)")[0]
    t_32, t_64, _, _ = compare(lambda: gen_eval(32), lambda: gen_eval(cfg.gen_batch_size))
    print(f"evaluation, 128 samples: 32 at a time {t_32:.2f} s, {cfg.gen_batch_size} at a time {t_64:.2f} s, ratio {t_32 / t_64:.2f}x")

    # 3. PPO forwards with the shared right padding dropped (the trainer) or kept (baseline).
    G = cfg.max_new_tokens
    lengths = torch.tensor([G] + [rng.randint(20, 100) for _ in range(31)])                  # (N,)
    resp = torch.randint(2, len(tok), (32, G))                                                # (N, G)
    mask = (torch.arange(G)[None] < lengths[:, None]).long()                                 # (N, G)
    b_ids, b_attn = torch.cat([ids, resp], 1), torch.cat([am, mask], 1)                     # (N, P+G)
    order = torch.randperm(32, generator=torch.Generator().manual_seed(0)).split(cfg.minibatch_size)

    def passes(drop_right):
        original = stepcoder.drop_shared_padding
        if not drop_right:  # baseline: drop the shared left padding only (the trainer before 2026-11-28)
            left_only = lambda i, a: (i[:, int(a.any(0).int().argmax()):], a[:, int(a.any(0).int().argmax()):], 0)
            stepcoder.drop_shared_padding = left_only
        try:
            with torch.no_grad():
                old = torch.cat([stepcoder.logprobs_and_values(policy, value_head, b_ids[mb], b_attn[mb], G, 0.5)[0] for mb in order])
            for mb in order:
                logprobs, _, values = stepcoder.logprobs_and_values(policy, value_head, b_ids[mb], b_attn[mb], G, 0.5)
                (logprobs.sum() + values.sum()).backward()
            return old * mask[torch.cat(order)]  # rows in minibatch order
        finally:
            stepcoder.drop_shared_padding = original
    t_keep, t_drop, lp_keep, lp_drop = compare(lambda: passes(False), lambda: passes(True))
    assert torch.allclose(lp_keep, lp_drop, atol=1e-5), "dropping the right padding changed the log-probs"
    print(f"PPO forwards, 32 rollouts (mean length {lengths.float().mean():.0f}, longest {G}): padding kept "
          f"{t_keep:.2f} s, dropped {t_drop:.2f} s, ratio {t_keep / t_drop:.2f}x")

    # 3b. A default step's rollouts (16 problems x 2 samples, other lengths) with a minibatch's rows run in
    #     length-sorted groups (--rows-per-forward, tiny: 2) against one forward per minibatch; and
    #     warm-start steps (8 problems each) the same two ways.
    step_problems = [p for p in rng.sample(problems, 16) for _ in range(2)]
    step_ids, step_am = stepcoder.tokenize_prompts(tok, [curriculum.build_prompt(p, tok) for p in step_problems], "cpu")
    step_b_ids, step_b_attn = torch.cat([step_ids, resp], 1), torch.cat([step_am, mask], 1)   # (N, P+G)
    def grouped_passes(rows_per_forward):
        settings = dataclasses.replace(cfg, temperature=0.5, rows_per_forward=rows_per_forward)
        with torch.no_grad():
            old = torch.cat([stepcoder.forward_rows(policy, value_head, step_b_ids[mb], step_b_attn[mb], G, settings)[0]
                             for mb in order])
        for mb in order:
            logprobs, _, values = stepcoder.forward_rows(policy, value_head, step_b_ids[mb], step_b_attn[mb], G, settings)
            (logprobs.sum() + values.sum()).backward()
        return old * mask[torch.cat(order)]
    t_whole, t_grouped, lp_whole, lp_grouped = compare(lambda: grouped_passes(0), lambda: grouped_passes(cfg.rows_per_forward))
    assert torch.allclose(lp_whole, lp_grouped, atol=1e-5), "rows in length groups changed the log-probs"
    print(f"PPO forwards, 32 rollouts of 16 problems: whole minibatches of {cfg.minibatch_size} {t_whole:.2f} s, groups of "
          f"{cfg.rows_per_forward} rows {t_grouped:.2f} s, ratio {t_whole / t_grouped:.2f}x")
    sft_batches = [rng.sample(problems, cfg.sft_batch_size) for _ in range(5)]
    def sft_steps(rows_per_forward):
        for sft_batch in sft_batches:
            texts = [curriculum.build_prompt(p, tok) + p.canonical_solution + tok.eos_token for p in sft_batch]
            enc = tok(texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
            labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
            loss = models.sft_backward(model, enc["input_ids"], enc["attention_mask"], labels, rows_per_forward)
        return loss
    t_whole, t_grouped, loss_whole, loss_grouped = compare(lambda: sft_steps(0), lambda: sft_steps(cfg.rows_per_forward))
    assert torch.isclose(loss_whole, loss_grouped, atol=1e-5), "rows in length groups changed the warm start's loss"
    print(f"warm start, {len(sft_batches)} steps of {cfg.sft_batch_size}: whole batches {t_whole:.2f} s, groups of "
          f"{cfg.rows_per_forward} rows {t_grouped:.2f} s, ratio {t_whole / t_grouped:.2f}x")

    # 4. log-probs and entropy: in chunks with the backward pass recomputing them (the trainer) against
    #    one log_softmax over all positions (baseline), in the update's forward + backward.
    def one_pass(logits, tokens, temperature, chunk=None):
        logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
        with torch.no_grad():
            entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logp_all.gather(-1, tokens[..., None]).squeeze(-1), entropy
    def update_passes(token_logprobs):
        original = stepcoder.token_logprobs
        stepcoder.token_logprobs = token_logprobs
        try:
            for mb in order:
                logprobs, _, _ = stepcoder.logprobs_and_values(policy, value_head, b_ids[mb], b_attn[mb], G, 0.5)
                logprobs.sum().backward()
            return logprobs.detach()
        finally:
            stepcoder.token_logprobs = original
    t_one, t_chunks, lp_one, lp_chunks = compare(lambda: update_passes(one_pass), lambda: update_passes(stepcoder.token_logprobs))
    assert torch.allclose(lp_one, lp_chunks, atol=1e-5), "log-probs in chunks differ from one pass"
    print(f"update forward + backward, log-probs: one pass {t_one:.2f} s, in chunks with recompute {t_chunks:.2f} s, "
          f"ratio {t_one / t_chunks:.2f}x (the chunks save memory: (B, G, V) float32 copies on a GPU)")

    # 5. Sampling from the merged copy (--sampler merged, the default) against the policy's LoRA layers
    #    (--sampler policy): 32 prompts, greedy, the adapter given non-zero weights. Same tokens required.
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    sampler = models.make_sampler(policy, cfg)
    models.refresh_sampler(sampler, policy)
    def gen_with(model):
        return stepcoder.generate(model, tok, ids, am, cfg.max_new_tokens, 0.0, 1.0, cfg.gen_batch_size, "greedy")[0]
    t_policy, t_merged, r_policy, r_merged = compare(lambda: gen_with(policy), lambda: gen_with(sampler))
    assert torch.equal(r_policy, r_merged), "the merged sampler decoded other tokens than the policy"
    print(f"generate 32 x {r_merged.shape[1]} tokens (greedy): policy (LoRA layers) {t_policy:.2f} s, merged sampler "
          f"{t_merged:.2f} s, ratio {t_policy / t_merged:.2f}x")

    # 6. The default command end to end, against the same command sampling from the policy (the old path).
    if args.full:
        seconds = {}
        for label, extra in (("--sampler policy", ["--sampler", "policy"]), ("default", [])):
            with tempfile.TemporaryDirectory() as out:
                t0 = time.perf_counter()
                run = subprocess.run([sys.executable, os.path.join(ROOT, "stepcoder.py"), "--model", "tiny", "--out", out, *extra],
                                     check=True, cwd=ROOT, capture_output=True, text=True)
                seconds[label] = time.perf_counter() - t0
            print(f"python3 stepcoder.py --model tiny {label if extra else ''}: {seconds[label] / 60:.1f} min")
            print(*[line[:90] for line in run.stdout.splitlines() if line.startswith("pass@1")], sep="\n")
        print(f"default against --sampler policy: ratio {seconds['--sampler policy'] / seconds['default']:.2f}x; "
              f"against the 10-minute target: {600 / seconds['default']:.2f}x")


if __name__ == "__main__":
    main()
