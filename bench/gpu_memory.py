"""Does PPO on DeepSeek-Coder-1.3B fit in 24 GB? Peak GPU memory, tokens/s and seconds per step.

    python3 bench/gpu_memory.py --arch both            # on a CUDA GPU: 1.3B, then 6.7B if it fits
    python3 bench/gpu_memory.py --scaled               # on a CPU: a scaled-down model, proves the path
    python3 bench/gpu_memory.py --arch 1.3b --emulate-24gb     # cap the process at 24 GiB: fits or OOM
    python3 bench/gpu_memory.py --arch 6.7b --json out.json --trainer-args="--sampler policy"
    python3 bench/gpu_memory.py --budget                        # the memory of each phase on paper, no GPU (support/memory.py)

What it does: builds the DeepSeek-Coder architecture from its published config (LlamaForCausalLM)
with random weights, no download, saves it (bf16) with a byte-level BPE tokenizer of the same
vocabulary size (eos = <|EOT|> at 32021, pad 32014, bos 32013, as in the instruct model, and a chat
template of the same shape) to a temporary directory, then runs the real trainer on it:
stepcoder.train(parse_config(["--model", DIR, "--steps", "2", ...])) with the default batch
(problems_per_step x samples_per_problem rollouts, gen_batch_size, minibatch_size, 2 PPO epochs)
and max_new_tokens 1024. On CUDA the base is 4-bit NF4 (the trainer's default there), with LoRA
and the value head. It measures torch.cuda.max_memory_allocated / max_memory_reserved over the
whole run, and the peak allocated during the rollouts' generate apart from the rest (log-probs,
PPO update), seconds per PPO step (t_generate + t_score + t_update from metrics.jsonl, mean over
the steps after the first) and generated tokens per second, and prints budget / peak reserved,
the ratio against the 24 GiB target (> 1 fits). Each architecture runs in turn; an OOM is reported.

Caveats:
  * Random weights rarely emit EOS, so every rollout runs to max_new_tokens: the worst case for
    memory and generation time. Sandbox time (t_score) is not representative: the "programs" are
    noise and fail at once; a trained model's programs run their unit tests.
  * Prompt lengths come from this tokenizer (trained on the problems), not DeepSeek's; the max is
    printed. Peak reserved excludes the CUDA context (~0.5 GiB), which a 24 GB card also holds. On
    an 80 GB card the caching allocator may reserve more than a 24 GB card would need (it frees its
    cache only under pressure): peak allocated is the floor, --emulate-24gb the direct test.
  * On a CPU (or with --scaled) the model is 2 layers, hidden size / 8 (head_dim 128, vocabulary
    kept), max_new_tokens 64, --quantize nf4: the numbers are NOT the GPU numbers, only the proof
    that the whole path (4-bit base, LoRA, value head, generate, sandbox, PPO update) runs.
"""
import argparse, datetime, gc, json, os, resource, shlex, sys, tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import curriculum, stepcoder  # noqa: E402
from support import memory, models  # noqa: E402
from support.memory import ARCHS, COMMON  # noqa: E402  the published configs (their sources: support/memory.py)

SPECIALS = {32013: "<|bos|>", 32014: "<|pad|>", 32021: "<|EOT|>"}
CHAT = ("{{ bos_token }}You are an AI programming assistant. Answer questions about computer science.\n"
        "{% for m in messages %}### Instruction:\n{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}### Response:\n{% endif %}")
GIB, BUDGET = 2 ** 30, 24 * 2 ** 30


def model_config(arch: str, scaled: bool):
    from transformers import LlamaConfig
    dims = dict(ARCHS[arch])
    if scaled:  # same family, 2 layers, widths / 8 (head_dim stays 128; bitsandbytes' CPU kernel wants
        # output widths divisible by 32, hence 5504 / 8 = 688 -> 704), vocabulary kept
        dims = dict(hidden_size=dims["hidden_size"] // 8, intermediate_size=-(-dims["intermediate_size"] // 256) * 32,
                    num_hidden_layers=2, num_attention_heads=dims["num_attention_heads"] // 8)
    return LlamaConfig(**COMMON, **dims, num_key_value_heads=dims["num_attention_heads"])


def build_tokenizer(problems: list, vocab_size: int):
    """Byte-level BPE on the problems, then added tokens up to vocab_size; specials at DeepSeek's ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    bpe.train_from_iterator([curriculum.build_prompt(p) + p.canonical_solution for p in problems],
                            trainers.BpeTrainer(vocab_size=8000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                show_progress=False))
    start = bpe.get_vocab_size()
    for special_id in sorted(SPECIALS) + [vocab_size]:  # fillers up to each special's id, then the special
        bpe.add_tokens([AddedToken(f"<|fill{i}|>", normalized=False) for i in range(start, special_id)])
        if special_id < vocab_size:
            bpe.add_special_tokens([AddedToken(SPECIALS[special_id], special=True)])
        start = special_id + 1
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=SPECIALS[32013], pad_token=SPECIALS[32014],
                                  eos_token=SPECIALS[32021])
    tok.chat_template = CHAT
    assert len(tok) == vocab_size and tok.eos_token_id == 32021 and tok.pad_token_id == 32014
    return tok


def budget(arch: str, cfg, prompt_tokens: int) -> dict:
    """GiB of each phase of a PPO step on paper: support/memory.py's budget(), which the trainer's plan at start
    uses too (its docstring says how each term is counted)."""
    return memory.budget(memory.MODELS[f"deepseek-coder-{arch}"], cfg, prompt_tokens)


def sampler_gap(policy, cfg, tok, problems: list, device) -> float:
    """Mean |log p_sampler - log p_train| per generated token: 8 rollouts sampled by the merged sampler at the
    rollout's settings, scored by both models (the trainer's PPO ratio uses the training forward's)."""
    sampler = models.make_sampler(policy, cfg)
    models.refresh_sampler(sampler, policy)
    prompts = [stepcoder.fit_prompt(tok, p, "", cfg.max_prompt_tokens)[0] for p in problems[:8]]
    ids, mask = stepcoder.tokenize_prompts(tok, prompts, device)
    resp, lengths = stepcoder.generate(sampler, tok, ids, mask, cfg.max_new_tokens, cfg.temperature, cfg.top_p, 8, "gap")
    resp_mask = (torch.arange(resp.shape[1], device=device)[None] < lengths[:, None]).long()
    full, full_mask = torch.cat([ids, resp], 1), torch.cat([mask, resp_mask], 1)
    value_head = torch.nn.Linear(policy.config.hidden_size, 1, device=device)
    with torch.no_grad():
        train = stepcoder.logprobs_and_values(policy, value_head, full, full_mask, resp.shape[1], cfg.temperature)[0]
        sampled = stepcoder.logprobs_and_values(sampler, value_head, full, full_mask, resp.shape[1], cfg.temperature)[0]
    del sampler
    return (((train - sampled).abs() * resp_mask).sum() / resp_mask.sum()).item()


def measure(arch: str, args, out_root: str) -> dict:
    """Save the random model + tokenizer, run the trainer, read back memory and speed."""
    from transformers import LlamaForCausalLM
    cuda, scaled = torch.cuda.is_available(), args.scaled or not torch.cuda.is_available()
    data = os.path.join(ROOT, "data", "train.json")
    problems = curriculum.load_problems(data)
    config, model_dir = model_config(arch, scaled), os.path.join(out_root, f"model-{arch}")
    max_new = args.max_new_tokens or (64 if scaled else 1024)
    argv = ["--model", model_dir, "--data", data, "--steps", str(args.steps), "--max-new-tokens", str(max_new),
            "--out", os.path.join(out_root, f"run-{arch}"), "--overwrite", "--save-every", "1000000"]
    argv += (["--quantize", "nf4"] if not cuda else []) + shlex.split(args.trainer_args)
    cfg = stepcoder.parse_config(argv)  # before the slow part: a bad --trainer-args flag fails here
    # (on CUDA the trainer's memory plan may change settings the flags leave at their defaults: the row's are read after)
    tok = build_tokenizer(problems, config.vocab_size)
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):  # random init on the GPU is much faster
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(model_dir), tok.save_pretrained(model_dir)
    del model
    gc.collect(), cuda and torch.cuda.empty_cache()
    prompt_lens = [len(tok(curriculum.build_prompt(p, tok), add_special_tokens=False)["input_ids"]) for p in problems]
    row = dict(arch=arch + (" (scaled)" if scaled else ""), device=torch.cuda.get_device_name() if cuda else "cpu",
               params=n_params, max_new_tokens=max_new, max_prompt_tokens=max(prompt_lens), trainer_argv=argv)
    peaks = {"generate": [0.0, 0.0], "other": [0.0, 0.0]}  # GiB allocated, reserved: rollouts vs the rest
    def read_peaks(phase):  # the peak since the last read goes to `phase`; then reset the counters
        for i, peak in enumerate((torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved())):
            peaks[phase][i] = max(peaks[phase][i], peak / GIB)
        torch.cuda.reset_peak_memory_stats()
    def generate(*a, **kw):  # stepcoder.train looks generate up at each call: this wraps the rollouts
        read_peaks("other")
        try:
            return plain_generate(*a, **kw)
        finally:
            read_peaks("generate")
    plain_generate = stepcoder.generate
    if cuda:
        row["start_allocated_gib"] = torch.cuda.memory_allocated() / GIB  # left over from an earlier arch
        torch.cuda.reset_peak_memory_stats()
        stepcoder.generate = generate
    try:
        run_dir, policy, value_head = stepcoder.train(cfg)
    except torch.cuda.OutOfMemoryError as e:
        row.update(status="OOM", error=str(e).splitlines()[0])
    else:
        if cfg.sampler == "merged":
            row["sampler_logp_gap"] = sampler_gap(policy, cfg, tok, problems, policy.device)
        del policy, value_head
        steps = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
        warm = steps[1:] or steps  # the first step pays for warm-up (kernels, allocator)
        mean = lambda k: sum(s[k] for s in warm) / len(warm)
        row.update(status="ok", s_per_step=mean("t_generate") + mean("t_score") + mean("t_update"),
                   t_generate=mean("t_generate"), t_score=mean("t_score"), t_update=mean("t_update"),
                   gen_tokens_per_s=mean("gen_tokens_per_s"))
    finally:
        stepcoder.generate = plain_generate
    row.update(rollouts=cfg.problems_per_step * cfg.samples_per_problem, gen_batch_size=cfg.gen_batch_size,
               minibatch_size=cfg.minibatch_size, sampler=cfg.sampler, gradient_checkpointing=cfg.gradient_checkpointing,
               budget_gib=budget(arch, cfg, max(prompt_lens)))  # the planned peak: budget_gib[memory.PEAK]
    if cuda:
        read_peaks("other")
        row.update(peak_allocated_gib=max(peaks["generate"][0], peaks["other"][0]),
                   peak_reserved_gib=max(peaks["generate"][1], peaks["other"][1]),
                   generate_peak_allocated_gib=peaks["generate"][0], other_peak_allocated_gib=peaks["other"][0])
        row["budget_over_peak"] = BUDGET / (row["peak_reserved_gib"] * GIB)  # after an OOM: an upper bound
    else:  # a stand-in so the CPU table is not empty; not comparable to GPU memory
        row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
    gc.collect(), cuda and torch.cuda.empty_cache()
    return row


BUDGET_SETTINGS = {  # label: (architecture, trainer flags over that model's defaults)
    "1.3B, before (policy samples, 2 x 16, no checkpointing)": ("1.3b", ["--sampler", "policy", "--gen-batch-size", "16", "--no-gradient-checkpointing"]),
    "1.3B, defaults (merged sampler, 1 x 32, checkpointing)": ("1.3b", []),
    "6.7B, 1.3B's defaults (merged sampler, 1 x 32)": ("6.7b", ["--sampler", "merged", "--gen-batch-size", "32"]),
    "6.7B, defaults (policy samples, 2 x 16)": ("6.7b", []),
    "6.7B, policy samples, 4 x 8": ("6.7b", ["--sampler", "policy", "--gen-batch-size", "8"]),
}


def print_budget(prompt_tokens: int) -> None:
    rows = {label: budget(arch, stepcoder.parse_config(["--model", f"deepseek-coder-{arch}", *flags]), prompt_tokens)
            for label, (arch, flags) in BUDGET_SETTINGS.items()}
    print(f"GiB on paper, prompt {prompt_tokens} + 1024 new tokens, minibatch 4 (support/memory.py budget()):")
    print(f"| {'':<38} | " + " | ".join(label for label in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for key in next(iter(rows.values())):
        print(f"| {key:<38} | " + " | ".join(f"{row[key]:.2f}" for row in rows.values()) + " |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=["1.3b", "6.7b", "both"], default="1.3b")
    ap.add_argument("--scaled", action="store_true", help="the CPU-size config (forced without CUDA)")
    ap.add_argument("--max-new-tokens", type=int, default=0, help="default: 1024 on GPU, 64 scaled")
    ap.add_argument("--steps", type=int, default=2, help="PPO steps per architecture (>= 2: the first is warm-up)")
    ap.add_argument("--trainer-args", default="",
                    help='extra stepcoder flags, with "=": --trainer-args="--gradient-checkpointing"')
    ap.add_argument("--json", default="", help="write the rows here")
    ap.add_argument("--emulate-24gb", action="store_true",
                    help="cap this process at 24 GiB of the GPU (torch.cuda.set_per_process_memory_fraction)")
    ap.add_argument("--budget", action="store_true", help="print the memory budget on paper (no model is built) and stop")
    ap.add_argument("--prompt-tokens", type=int, default=memory.PROMPT_TOKENS, help="prompt length the budget assumes (the bundled problems: <= 330 in this tokenizer)")
    args = ap.parse_args(argv)
    if args.budget:
        print_budget(args.prompt_tokens)
        return 0
    if args.steps < 1 or args.max_new_tokens < 0:
        ap.error("--steps must be >= 1 and --max-new-tokens >= 0 (0: the default)")
    if args.emulate_24gb and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(min(1.0, BUDGET / torch.cuda.get_device_properties(0).total_memory))
    if not torch.cuda.is_available():
        print("No CUDA device: running the SCALED-DOWN config on the CPU. These numbers are NOT the GPU "
              "numbers; they only prove the path (4-bit base, LoRA, value head, rollouts, PPO update).")
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu_memory_") as tmp:
        for arch in (["1.3b", "6.7b"] if args.arch == "both" else [args.arch]):
            try:
                rows.append(measure(arch, args, tmp))
            except stepcoder.UsageError as e:  # e.g. a bad --trainer-args flag
                print(f"gpu_memory: error: {e}", file=sys.stderr)
                return 2
            if args.json:  # after each architecture, so that a later OOM or timeout keeps the first
                with open(args.json, "w") as f:
                    json.dump(rows, f, indent=1)
    print(f"\n{'arch':<15}{'params':>7}{'status':>7}{'s/step':>8}{'(gen':>7}{'score':>6}{'upd)':>6}{'gen tok/s':>10}"
          f"{'peak alloc':>11}{'peak resv':>10}{'24GiB/peak':>11}")
    for r in rows:
        ok = r["status"] == "ok"
        speed = (f"{r['s_per_step']:>8.1f}{r['t_generate']:>7.1f}{r['t_score']:>6.1f}{r['t_update']:>6.1f}"
                 f"{r['gen_tokens_per_s']:>10.0f}") if ok else f"{'-':>8}{'':>19}{'-':>10}"
        mem = (f"{r['peak_allocated_gib']:>10.2f}G{r['peak_reserved_gib']:>9.2f}G{'' if ok else '<':>5}"
               f"{r['budget_over_peak']:.2f}x") if "peak_reserved_gib" in r else \
            f"{'(CPU RSS ' + format(r['peak_rss_gib'], '.2f') + 'G)':>21}{'n/a':>11}"
        print(f"{r['arch']:<15}{r['params'] / 1e9:>6.2f}B{r['status']:>7}{speed}{mem}")
    for r in rows:
        if "generate_peak_allocated_gib" in r:
            print(f"{r['arch']}: peak allocated during the rollouts (generate) {r['generate_peak_allocated_gib']:.2f} GiB, "
                  f"during the rest (log-probs, PPO update) {r['other_peak_allocated_gib']:.2f} GiB")
    r0 = rows[0]
    print(f"{datetime.date.today()}, {r0['device']}, torch {torch.__version__}; {r0['rollouts']} rollouts/step "
          f"(gen batch {r0['gen_batch_size']}, minibatch {r0['minibatch_size']}), max_new_tokens {r0['max_new_tokens']}, "
          f"longest prompt {r0['max_prompt_tokens']} tokens; mean of steps {'2+' if args.steps > 1 else '1'}.\n"
          f"Target: 1.3B peak reserved under 24 GiB, i.e. 24GiB/peak > 1"
          + (" (after an OOM the ratio is an upper bound)." if any(r["status"] != "ok" for r in rows) else "."))
    return 0


if __name__ == "__main__":
    sys.exit(main())
