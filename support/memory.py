"""GPU memory on paper: the peak of a PPO step from the model's architecture and the trainer's settings, and
the settings that fit a GPU's free memory. One function, `budget`, for the trainer's plan at start (on CUDA,
before the weights load: `check_gpu`), `stepcoder.py --memory-plan` and `bench/gpu_memory.py --budget`.

    python3 stepcoder.py --model deepseek-coder-6.7b --memory-plan    # the table and what fits 24/16/12 GiB; any machine
    python3 stepcoder.py --model path/to/model --memory-plan          # a local model: its config.json

What it does: `budget` counts each term of the peak (its docstring says how); `fit` finds the settings that
fit some free memory: the policy samples instead of a 16-bit copy, then the larger phase shrinks (generation:
half the --gen-batch-size; the update: gradient checkpointing, then half the --minibatch-size); a flag the
user gave never changes, nor, on --resume, any setting the run saved. At start on CUDA (`check`): settings
that fit run as they are; defaults that do not are changed, in one line; the user's flags that do not fit
stop the run: one line naming the planned peak, the free memory and the flags that would fit (UsageError,
exit 2).

What it is not: a measurement. The one measured row (1.3B, policy sampling without checkpointing, on
2026-11-28: 22.6 GiB allocated) was about 2x its estimate (10.7 GiB), mostly the update's activations, which
gradient checkpointing (the default) keeps small; the allocator's cache and temporaries are not counted, hence
HEADROOM_GIB. A plan that fits can still run out of memory; bench/gpu_memory.py measures the peak beside it.
"""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from support.config import MODEL_ALIASES, Config, UsageError, is_tiny

# Published configs (config.json of deepseek-ai/deepseek-coder-{1.3b,6.7b}-instruct, as reproduced in
# e.g. huggingface.co/unrahul/deepseek-coder-1.3b-instruct-nf4 and .../CMU-AIR2/code-full-hard (1.3B),
# huggingface.co/ajibawa-2023/Code-290k-6.7B-Instruct (6.7B), and a verl log printing the 1.3B
# LlamaConfig): LlamaForCausalLM, untied embeddings, rope_theta 100000, linear RoPE scaling x4,
# rms_norm_eps 1e-6, bos 32013, eos 32021 (<|EOT|>), pad 32014, vocab 32256, as many key-value heads as
# heads. Check: 1.3B has 1,346,471,936 parameters (a public PEFT card: 1,347,258,368 total incl. 786,432
# LoRA weights).
COMMON = dict(vocab_size=32256, max_position_embeddings=16384, rope_theta=100000.0,
              rope_scaling={"type": "linear", "factor": 4.0}, rms_norm_eps=1e-6, hidden_act="silu",
              tie_word_embeddings=False, bos_token_id=32013, eos_token_id=32021, pad_token_id=32014)
ARCHS = {"1.3b": dict(hidden_size=2048, intermediate_size=5504, num_hidden_layers=24, num_attention_heads=16),
         "6.7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32)}
MODELS = {f"deepseek-coder-{size}": {**COMMON, **dims} for size, dims in ARCHS.items()}  # known without a download
GIB = 2 ** 30
PROMPT_TOKENS = 400  # the prompt the plan assumes (at most --max-prompt-tokens); the bundled problems: <= 330
HEADROOM_GIB = 1.0   # kept free beside the peak on paper: the allocator's cache, temporaries (not counted)
CARDS_GIB = (24, 16, 12)  # the free memory --memory-plan shows what fits in
PEAK = "peak (fixed + the larger phase)"


def budget(arch: dict, cfg: Config, prompt_tokens: int | None = None) -> dict:
    """GiB of each phase of a PPO step, on paper, from the architecture (config.json's numbers) and the trainer's
    settings. 16-bit: the compute dtype, bf16 or float16 (cards before Ampere; support/models.py: precision),
    2 bytes either way. Weights: 4-bit linears at 0.5 byte per weight (+ ~3% quantisation constants), embeddings
    and head in 16-bit (--quantize none: all 16-bit); LoRA weights, gradients and AdamW moments in float32.
    Generation: the preallocated KV cache of gen_batch_size rows of prompt + max_new_tokens (2 x layers x
    key-value width x 2 bytes a token). The update, per minibatch of prompt + max_new_tokens tokens: the
    activations autograd keeps, about 2 x (6 hidden + 4 intermediate) bytes a token and layer (norm inputs, q,
    k, v, attention output; gate, up, SiLU, product), or with gradient checkpointing each layer's input plus
    one layer's; the logits in 16-bit plus their float32 log-softmax copies: three (B, G, V) of them in one
    pass, one chunk's with token_logprobs. The prompt: PROMPT_TOKENS, at most --max-prompt-tokens, unless
    given. --algo grpo plans the same: it runs no value head, but the head is one float32 linear layer, and the
    hidden states PPO's no-grad forward keeps for it (one per layer and token) are fewer bytes than the
    update's activations and logits."""
    if prompt_tokens is None:
        prompt_tokens = min(PROMPT_TOKENS, cfg.max_prompt_tokens)
    h, inter, layers, vocab = arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"], arch["vocab_size"]
    heads = arch["num_attention_heads"]
    kv = (arch.get("num_key_value_heads") or heads) * (arch.get("head_dim") or h // heads)  # k and v widths
    linear = layers * (2 * h * h + 2 * h * kv + 3 * h * inter)
    embeddings = (1 if arch.get("tie_word_embeddings") else 2) * vocab * h
    dims = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h), "gate_proj": (h, inter),
            "up_proj": (h, inter), "down_proj": (inter, h)}
    lora = layers * cfg.lora_r * sum(sum(dims[t]) for t in cfg.lora_targets.split(",") if t in dims)
    tokens = prompt_tokens + cfg.max_new_tokens
    per_layer_token = 2 * (6 * h + 4 * inter)
    activations = cfg.minibatch_size * tokens * (layers * 2 * h + per_layer_token) if cfg.gradient_checkpointing \
        else cfg.minibatch_size * tokens * layers * per_layer_token
    logits = cfg.minibatch_size * cfg.max_new_tokens * vocab * 2
    logit_copies = cfg.minibatch_size * min(128, cfg.max_new_tokens) * vocab * 4 * 3  # one chunk's float32 copies
    four_bit = cfg.quantize != "none"  # a pretrained model on CUDA: 4-bit NF4 unless --quantize none
    row = {f"weights ({'4-bit' if four_bit else '16-bit'} base)": linear * 0.5 * 1.03 + embeddings * 2 if four_bit
           else (linear + embeddings) * 2,
           "LoRA + grads + AdamW": lora * 4 * 4,
           "merged sampler (16-bit copy)": (linear + embeddings) * 2 if cfg.sampler == "merged" else 0.0,
           "generate: KV cache": 2 * layers * kv * 2 * cfg.gen_batch_size * tokens,
           "update: activations": activations, "update: logits": logits + 2 * logits + logit_copies}
    row = {k: v / GIB for k, v in row.items()}
    fixed = sum(list(row.values())[:3])  # weights, LoRA, sampler: held throughout
    row[PEAK] = fixed + max(row["generate: KV cache"], row["update: activations"] + row["update: logits"])
    return row


def architecture(model: str) -> dict | None:
    """config.json's numbers for budget(): a known name or its hub id (no download), a local directory's
    config.json, or a hub id's in the local Hugging Face cache; None for tiny, or a model whose config is not
    on disk or lacks the numbers."""
    if is_tiny(model):
        return None
    for name, hub_id in MODEL_ALIASES.items():
        if model in (name, hub_id):
            return MODELS[name]
    path = Path(model) / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache
            cached = try_to_load_from_cache(model, "config.json")
        except ValueError:  # not a hub id
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    config = json.loads(path.read_text())
    needed = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    return config if all(isinstance(config.get(k), int) for k in needed) else None


def fits(peak_gib: float, free_gib: float) -> bool:
    return peak_gib + HEADROOM_GIB <= free_gib


def fit(arch: dict, cfg: Config, free_gib: float, keep=()) -> dict | None:
    """The fields to change so that the peak on paper fits `free_gib` ({}: cfg fits as it is; None: nothing
    does), each change kept while it is still over: the policy samples (no 16-bit copy); then the larger phase
    shrinks: generation halves --gen-batch-size, the update turns on gradient checkpointing, then halves
    --minibatch-size. The fields in `keep` (the user's flags) never change."""
    changes = {}
    while True:
        now = replace(cfg, **changes)
        row = budget(arch, now)
        if fits(row[PEAK], free_gib):
            return changes
        steps = [("sampler", "policy")] if now.sampler == "merged" else []
        if row["generate: KV cache"] >= row["update: activations"] + row["update: logits"]:
            steps += [("gen_batch_size", now.gen_batch_size // 2)] if now.gen_batch_size > 1 else []
        else:
            steps += [("gradient_checkpointing", True)] if not now.gradient_checkpointing else []
            steps += [("minibatch_size", now.minibatch_size // 2)] if now.minibatch_size > 1 else []
        step = next(((name, value) for name, value in steps if name not in keep), None)
        if step is None:
            return None
        changes[step[0]] = step[1]


def flags(changes: dict) -> str:
    """{"sampler": "policy", "gradient_checkpointing": False} -> '--sampler policy --no-gradient-checkpointing'"""
    out = []
    for name, value in changes.items():
        flag = name.replace("_", "-")
        out.append(f"--{flag}" if value is True else f"--no-{flag}" if value is False else f"--{flag} {value}")
    return " ".join(out)


def peak(arch: dict, cfg: Config, changes: dict | None = None) -> float:
    return budget(arch, replace(cfg, **(changes or {})))[PEAK]


def check(cfg: Config, free_gib: float, gpu: str = "this GPU") -> str:
    """The plan against a GPU's free memory, before the weights load -> one line to print ("" without a plan).
    Settings that do not fit: the defaults are changed in cfg to the ones `fit` picks; if that would change a
    flag the user gave (cfg.given: on --resume every saved setting), UsageError naming the planned peak, the free
    memory and the flags that fit."""
    arch = architecture(cfg.model)
    if arch is None:
        return ""
    planned, where = peak(arch, cfg), f"{free_gib:.1f} GiB free on {gpu}"
    changes = fit(arch, cfg, free_gib, keep=getattr(cfg, "given", ()))
    if changes == {}:
        return f"memory plan: {planned:.1f} GiB peak on paper (+ {HEADROOM_GIB:g} GiB headroom), {where}: fits"
    if changes is not None:
        line = (f"memory plan: these settings need {planned:.1f} GiB on paper (+ {HEADROOM_GIB:g} GiB headroom), "
                f"{where}: using {flags(changes)} ({peak(arch, cfg, changes):.1f} GiB); --memory-plan shows the table")
        for name, value in changes.items():
            setattr(cfg, name, value)
        return line
    anyway = fit(arch, cfg, free_gib)
    would = (f"{flags(anyway)} would fit ({peak(arch, cfg, anyway):.1f} GiB)" if anyway is not None else
             "no settings fit it: a GPU with more free memory, or fewer --max-new-tokens")
    if cfg.resume:  # its settings are the run's: changing them would not continue it as it ran
        would = (f"--resume {cfg.resume} keeps the run's settings: a GPU with more free memory, or a new run ("
                 + (f"{flags(anyway)} would fit, {peak(arch, cfg, anyway):.1f} GiB)" if anyway is not None
                    else "no settings fit it)"))
    raise UsageError(f"memory plan: these settings need {planned:.1f} GiB on paper (+ {HEADROOM_GIB:g} GiB headroom), "
                     f"{where}: {would}")


def free_gib(device) -> float:
    """GiB this process may still allocate on a CUDA device: the free memory, within the per-process cap
    (torch.cuda.set_per_process_memory_fraction, e.g. bench/gpu_memory.py --emulate-24gb)."""
    import torch
    free, total = torch.cuda.mem_get_info(device)
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda device: 1.0)(device)  # not in older torch
    capped = fraction * total - torch.cuda.memory_reserved(device)
    return min(free, capped) / GIB


def check_gpu(cfg: Config, device) -> None:
    """On CUDA, before the weights load: `check` against the least free memory of the ranks (every rank then
    picks the same settings); rank 0 prints its line."""
    import torch
    from support import distributed
    if device.type != "cuda":
        return
    line = check(cfg, min(distributed.gather(free_gib(device))), torch.cuda.get_device_name(device))
    if line and distributed.is_main():
        print(f"stepcoder: {line}", file=sys.stderr)


def report(cfg: Config) -> str:
    """`--memory-plan`: the model, the settings, each term of the peak in GiB, and what fits 24/16/12 GiB free
    (and this GPU's free memory, on CUDA)."""
    if is_tiny(cfg.model):
        return f"--model {cfg.model}: the tiny model runs on the CPU (or any GPU) in well under 1 GiB: no memory plan"
    arch = architecture(cfg.model)
    if arch is None:
        raise UsageError(f"--memory-plan: no architecture known for '{cfg.model}': name {' or '.join(MODELS)}, or a "
                         f"local model directory with its config.json")
    row = budget(arch, cfg)
    settings = {name: getattr(cfg, name) for name in ("algo", "sampler", "gen_batch_size", "minibatch_size",
                                                       "gradient_checkpointing", "max_new_tokens", "lora_r", "quantize")}
    lines = [f"memory plan for --model {cfg.model} ({arch['num_hidden_layers']} layers, hidden {arch['hidden_size']}, "
             f"vocabulary {arch['vocab_size']}), on paper, one GPU (support/memory.py):",
             f"settings: {flags(settings)}; prompt {min(PROMPT_TOKENS, cfg.max_prompt_tokens)} + "
             f"{cfg.max_new_tokens} new tokens", "", "| GiB | |", "|---|---:|",
             *[f"| {key} | {value:.2f} |" for key, value in row.items()], "",
             f"what fits (peak + {HEADROOM_GIB:g} GiB headroom <= free memory):"]
    cards = [(f"{gib} GiB free", gib) for gib in CARDS_GIB]
    import torch
    if torch.cuda.is_available():
        here = free_gib(torch.device("cuda"))
        cards.append((f"this GPU ({torch.cuda.get_device_name()}), {here:.1f} GiB free", here))
    for label, gib in cards:
        changes = fit(arch, cfg, gib)
        lines.append(f"  {label}: " + ("nothing fits" if changes is None else
                                       f"{flags(changes) or 'these settings'} ({peak(arch, cfg, changes):.1f} GiB)"))
    return "\n".join(lines)
