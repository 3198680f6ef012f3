"""StepCoder, small: PPO from compiler feedback, with the CCCS curriculum and FGO masking.

Run it:
    python stepcoder.py --model tiny                    # CPU, no download: SFT warm start, then PPO
    python stepcoder.py --model deepseek-coder-1.3b     # one 24 GB GPU, 4-bit base + LoRA
    python stepcoder.py --model tiny --no-cccs --no-fgo # vanilla PPO (the paper's ablation)
    python stepcoder.py --resume runs/tiny --steps 40   # continue a run to 40 PPO steps in total
    python stepcoder.py --help                          # every flag, with its default

What it implements (Dou et al., 2024, arXiv 2402.01391; ../shared/SPEC.md):
    reward from the sandbox (Eq. 3, sandbox.py) -> per-token KL penalty (Eq. 4) -> GAE (Eq. 2)
    -> clipped PPO surrogate (Eq. 1) on the tokens FGO keeps (Sec. 3.3); prompts carry the
    canonical prefix of each problem's CCCS stage (Sec. 3.2, curriculum.py).
    The policy is a LoRA adapter on a (4-bit) base model; the value head is one linear layer on
    the same forward pass; the reference policy is the same model with the adapter disabled.

Where this departs from the paper, and why:
    1. LoRA on a 4-bit NF4 base instead of full fine-tuning: the paper trains 6.7B on many GPUs;
       we target 1.3B on one 24 GB GPU (peak 22.6 GiB allocated, README); only the adapter and value head learn.
       4-bit compute is bf16 on CUDA, float32 on the CPU (`--load-in-4bit`, for tests).
    2. The reference policy is "adapters off". For `tiny` the SFT warm start trains the base weights
       before the adapter exists, so the reference is exactly the SFT model (as in the paper). A
       pretrained 4-bit base cannot be trained: there `--sft-steps` trains the adapter itself and the
       reference stays the base model (an instruct model is already SFT: no warm start by default).
    3. The value head shares the policy's backbone (paper: a separate critic) to save memory;
       its loss has a small coefficient (0.1) so it does not dominate the shared adapter.
    4. Smaller budgets: 4 samples per problem (paper 16), fewer problems per step; all flags.
       `--model tiny` draws 2 samples on each of 16 problems, samples at T = 0.5, uses lam = 1
       and reports pass@1 (and the mean reward) from 8 samples per problem beside greedy
       decoding (reasons at TINY_DEFAULTS).
    5. Instruct prompts end in "```python\\n" and the program is cut at the closing fence;
       tokens after the cut are not program text, so FGO masks them.
    6. The canonical prefix enters the prompt without its final line break (`prompt_prefix`):
       the policy writes that newline, so its first token is one the warm start has seen there.
"""
from __future__ import annotations

import argparse
import bisect
import itertools
import json
import math
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

import curriculum
import sandbox


@dataclass
class Config:
    # --- model -------------------------------------------------------------------------
    model: str = field(default="deepseek-coder-1.3b", metadata={"help": "tiny | deepseek-coder-1.3b | deepseek-coder-6.7b | a Hugging Face id | a local directory"})
    no_4bit: bool = field(default=False, metadata={"help": "do not quantise the base model (4-bit NF4 is the default on CUDA)"})
    load_in_4bit: bool = field(default=False, metadata={"help": "force 4-bit NF4 loading, also on the CPU"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    lora_targets: str = field(default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", metadata={"help": "comma-separated module names that get adapters (Llama family)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in the backward pass (less memory, ~30%% slower)"})
    # --- data and run --------------------------------------------------------------------
    data: str = field(default="data/train.json", metadata={"help": "training problems (APPS+ JSON / JSONL, or the APPS layout)"})
    test_data: str = field(default="data/test.json", metadata={"help": "problems for --eval"})
    out: str = field(default="", metadata={"help": "run directory (default: runs/<model name>)"})
    resume: str = field(default="", metadata={"help": "continue the run in this directory (its saved config is used; --steps is the total)"})
    overwrite: bool = field(default=False, metadata={"help": "delete an existing run directory and start again"})
    steps: int = field(default=100, metadata={"help": "total PPO steps of the run"})
    save_every: int = field(default=10, metadata={"help": "checkpoint every N steps (and at the end)"})
    show_rollouts: int = field(default=0, metadata={"help": "print this many scored rollouts per step: prefix, code with FGO-masked tokens marked, verdict"})
    eval: bool = field(default=False, metadata={"help": "pass@1 on --data (sampled and greedy) and --test-data (greedy) after the warm start and at the end (tiny: on)"})
    seed: int = field(default=0, metadata={"help": "random seed of RL: problem draws, sampling, adapter init"})
    # --- SFT warm start ------------------------------------------------------------------
    sft_steps: int = field(default=0, metadata={"help": "supervised steps on the canonical solutions before RL"})
    sft_seed: int = field(default=0, metadata={"help": "seed of tiny's initial weights and of the warm start's batches: tiny runs that differ only in --seed start from one model"})
    sft_lr: float = field(default=1e-4, metadata={"help": "learning rate of the warm start"})
    sft_batch_size: int = field(default=8, metadata={"help": "sequences per warm-start step"})
    # --- rollouts ------------------------------------------------------------------------
    problems_per_step: int = field(default=8, metadata={"help": "problems sampled per PPO step"})
    samples_per_problem: int = field(default=4, metadata={"help": "rollouts per problem (paper: 16)"})
    gen_batch_size: int = field(default=16, metadata={"help": "sequences generated at once"})
    max_prompt_tokens: int = field(default=1024, metadata={"help": "longer prompts get their problem statement shortened (never the canonical prefix)"})
    max_new_tokens: int = field(default=1024, metadata={"help": "generation length limit (paper: 1024)"})
    temperature: float = field(default=0.8, metadata={"help": "sampling temperature (paper: 0.8)"})
    top_p: float = field(default=0.9, metadata={"help": "nucleus sampling (paper: 0.9)"})
    eval_temperature: float = field(default=0.2, metadata={"help": "evaluation temperature; 0 means greedy only"})
    eval_samples: int = field(default=1, metadata={"help": "samples per problem at --eval-temperature: pass@1 is their mean pass rate"})
    eval_top_p: float = field(default=0.95, metadata={"help": "evaluation nucleus sampling"})
    timeout: float = field(default=4.0, metadata={"help": "seconds per unit test in the sandbox"})
    # --- PPO -----------------------------------------------------------------------------
    lr: float = field(default=2e-5, metadata={"help": "AdamW learning rate of the adapter"})
    vf_lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate of the value head (a fresh linear layer: it must catch up fast)"})
    ppo_epochs: int = field(default=2, metadata={"help": "passes over each rollout batch"})
    minibatch_size: int = field(default=4, metadata={"help": "sequences per gradient step"})
    clip_coef: float = field(default=0.2, metadata={"help": "PPO ratio clip (Eq. 1)"})
    vf_clip: float = field(default=0.2, metadata={"help": "value clip"})
    vf_coef: float = field(default=0.1, metadata={"help": "value loss coefficient"})
    kl_coef: float = field(default=0.05, metadata={"help": "beta of the per-token KL penalty (Eq. 4)"})
    gamma: float = field(default=1.0, metadata={"help": "discount (Eq. 2)"})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda (Eq. 2)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    # --- the two StepCoder components ----------------------------------------------------
    no_cccs: bool = field(default=False, metadata={"help": "ablation: every problem at stage 0 (plain generation)"})
    no_fgo: bool = field(default=False, metadata={"help": "ablation: no coverage mask on the policy loss"})
    cccs_alpha: float = field(default=curriculum.ALPHA, metadata={"help": "CCCS moving pass-rate factor"})
    cccs_threshold: float = field(default=curriculum.RHO_T, metadata={"help": "CCCS pass rate that moves a problem one stage on"})


# `--model tiny` fits a laptop CPU: a small model that needs a warm start, short programs.
# Three settings differ from the paper's, measured on the bundled problems (README, Results):
# - temperature 0.5: at 0.8 the tiny model's samples fail on every problem its greedy decoding
#   fails (0 of 8 samples on each of 27), so there is nothing to reinforce there; at 0.5 some pass.
# - evaluation: pass@1 from 8 samples per problem at the rollout's sampling settings (what RL
#   optimises; one greedy decode per problem is a coarse, noisier measure), greedy beside it.
# - lam 1.0: a fresh value head explains ~0% of the return's variance in 30 steps (metric
#   explained_var); with lam 0.95 the reward's credit then decays as 0.95^k with the distance k
#   from the last token, so a token 90 or more tokens before the end gets < 1% of it.
# - 16 problems x 2 samples per step (32 rollouts, as 8 x 4): each of the 66 problems is visited ~7
#   times in 30 steps instead of ~4. With 8 x 4 three seeds ended 0.470..0.513 pass@1 (their gain
#   was no larger than that spread); with 16 x 2, 0.502..0.508; 5 seeds on another host, 0.491..0.519.
TINY_DEFAULTS = dict(sft_steps=300, sft_lr=3e-3, max_new_tokens=160, max_prompt_tokens=512,
                     steps=30, lr=2e-4, problems_per_step=16, samples_per_problem=2, temperature=0.5, lam=1.0,
                     minibatch_size=8, gen_batch_size=64, timeout=2.0, lora_r=16,
                     eval=True, eval_temperature=0.5, eval_top_p=0.9, eval_samples=8)
TINY_MARKER = "stepcoder-tiny.json"  # written into a warm-started tiny base: `--model RUN/base` is tiny too
MODEL_ALIASES = {"deepseek-coder-1.3b": "deepseek-ai/deepseek-coder-1.3b-instruct",
                 "deepseek-coder-6.7b": "deepseek-ai/deepseek-coder-6.7b-instruct"}


class UsageError(Exception):
    """Bad flags, files or model names: one line on stderr, exit code 2."""


class Interrupted(Exception):
    """Ctrl-C: one line saying where the run stopped and how to continue it, exit code 130."""


def is_tiny(model: str) -> bool:
    """`tiny`, or a tiny base saved by a run (`--model runs/tiny/base`): full precision, tiny's defaults."""
    return model == "tiny" or (Path(model) / TINY_MARKER).is_file()


def parse_config(argv: list[str] | None = None) -> Config:
    """Every Config field is a flag; `--model tiny` changes the defaults the user did not set."""
    parser = argparse.ArgumentParser(description="StepCoder, small: PPO + CCCS + FGO.",
                                     argument_default=argparse.SUPPRESS,
                                     epilog=f"--model tiny changes these defaults: {TINY_DEFAULTS}")
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":  # --eval: tiny evaluates unless --no-eval
            action = argparse.BooleanOptionalAction if f.name in TINY_DEFAULTS else "store_true"
            parser.add_argument(flag, action=action, help=f.metadata["help"])
        else:
            parser.add_argument(flag, type={"int": int, "float": float}.get(f.type, str),
                                help=f"{f.metadata['help']} (default: {f.default!r})")
    parser.error = lambda msg: (_ for _ in ()).throw(UsageError(msg))  # one line, exit 2
    given = vars(parser.parse_args(argv))
    if given.get("resume"):  # the run's own config, with the few flags that may change
        saved = Path(given["resume"]) / "config.json"
        if not saved.exists():
            raise UsageError(f"--resume {given['resume']}: no config.json there; give the run directory of an earlier run")
        cfg = Config(**{**json.loads(saved.read_text()), **{k: v for k, v in given.items()
                        if k in ("steps", "eval", "save_every", "test_data", "resume", "show_rollouts")}})
    else:
        model = given.get("model", Config.model)
        tiny = TINY_DEFAULTS if model == "tiny" else {**TINY_DEFAULTS, "sft_steps": 0} if is_tiny(model) else {}
        cfg = Config(**{**tiny, **given})  # a saved tiny base is warm-started already: no SFT on top
    for name in ("steps", "sft_steps", "problems_per_step", "samples_per_problem", "gen_batch_size",
                 "max_new_tokens", "ppo_epochs", "minibatch_size", "save_every", "lora_r", "eval_samples"):
        if getattr(cfg, name) < (least := 0 if name in ("steps", "sft_steps") else 1):
            raise UsageError(f"--{name.replace('_', '-')} must be an integer >= {least}, got {getattr(cfg, name)}")
    if not (0 < cfg.top_p <= 1 and cfg.temperature > 0 and cfg.eval_temperature >= 0):
        raise UsageError("need 0 < --top-p <= 1, --temperature > 0 and --eval-temperature >= 0")
    for name in ("data", "test_data") if cfg.eval else ("data",):
        if not Path(getattr(cfg, name)).is_file():
            raise UsageError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: no such file")
    cfg.out = cfg.resume or cfg.out or f"runs/{Path(cfg.model).name}"
    return cfg


# ----------------------------------------------------------------------------- model ---

def build_tiny(problems: list, seed: int):
    """A small Llama and a byte-level BPE tokenizer trained on the problems: no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        [curriculum.build_prompt(p) + p.canonical_solution for p in problems],
        trainers.BpeTrainer(vocab_size=1024, special_tokens=["<|endoftext|>", "<|pad|>"],
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|pad|>")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024, bos_token_id=None,
                         tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return tok, LlamaForCausalLM(config)


def precision(cfg: Config, device_type: str, tiny: bool) -> tuple[bool, torch.dtype]:
    """(4-bit NF4?, compute dtype). A pretrained model on CUDA: 4-bit with bf16 compute unless --no-4bit.
    The tiny model stays full precision float32 everywhere (as on the CPU) unless --load-in-4bit."""
    use_4bit = cfg.load_in_4bit or (device_type == "cuda" and not cfg.no_4bit and not tiny)
    dtype = torch.bfloat16 if device_type == "cuda" and not tiny else torch.float32
    return use_4bit, dtype


CODE_SAMPLE = "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n"


def check_tokenizer(tok, path: str) -> None:
    """Indented code must survive encode -> decode: some transformers 5.x releases load DeepSeek-Coder's
    byte-level tokenizer as a SentencePiece one that drops every space and line break."""
    import transformers
    ids = tok(CODE_SAMPLE, add_special_tokens=False)["input_ids"]
    back = tok.decode(ids, skip_special_tokens=True)
    if back != CODE_SAMPLE:
        raise UsageError(f"the tokenizer of '{path}' does not give code back under transformers "
                         f"{transformers.__version__} ({CODE_SAMPLE[:24]!r} decodes as {back[:24]!r}): "
                         f"pip install -U 'transformers>=5.24,<6'")


def model_source(name: str) -> tuple[str, bool]:
    """Where a model loads from, said within seconds if nowhere: a local directory, a hub id already in the
    local cache, or a hub id while the hub answers. -> (path or id, load from local files only)"""
    import socket
    from urllib.parse import urlparse
    from huggingface_hub import constants, try_to_load_from_cache
    path = MODEL_ALIASES.get(name, name)
    if Path(path).is_dir():
        return path, True
    if path.startswith((".", "/", "~")) or path.count("/") > 1 or Path(path).exists():
        raise UsageError(f"--model {name}: no such directory (a local model is a directory holding config.json "
                         f"and the tokenizer's files); --model tiny needs no download")
    if isinstance(try_to_load_from_cache(path, "config.json"), str):
        return path, True
    if constants.HF_HUB_OFFLINE:
        raise UsageError(f"--model {name}: '{path}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
                         f"download it where there is a network, or pass a local directory")
    hub = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((hub.hostname, hub.port or (443 if hub.scheme == "https" else 80)), timeout=5).close()
    except OSError as e:
        raise UsageError(f"--model {name}: cannot reach the model hub at {constants.ENDPOINT} ({e.strerror or e}): "
                         f"no network? Pass a local directory, or --model tiny (no download)") from None
    return path, False


def load_base(name: str, cfg: Config, device: torch.device, tiny: bool = False):
    """Tokenizer and base model from a hub id or a local directory, 4-bit NF4 where asked."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    path, local = model_source(name)
    use_4bit, dtype = precision(cfg, device.type, tiny)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype) if use_4bit else None
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=local)
        check_tokenizer(tok, path)  # before the weights: a broken tokenizer is said at once
        if device.type == "cpu" and not tiny:
            print(f"stepcoder: no CUDA GPU here: {name} runs on the CPU in float32, far slower than on a GPU "
                  f"(--model tiny is the CPU demo)", file=sys.stderr)
        base = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, quantization_config=quant, device_map={"": device},
                                                    local_files_only=local)
    except (OSError, ValueError) as e:
        raise UsageError(f"could not load model '{path}' ({type(e).__name__}): check the name, the network, "
                         f"or pass a local directory; --model tiny needs no download") from None
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:  # pad must differ from EOS
        tok.pad_token = tok.unk_token or tok.bos_token
    base.config.use_cache = True
    if use_4bit and device.type == "cpu":  # bitsandbytes repacks 4-bit weights for CPU inference (eval mode,
        for module in base.modules():     # AVX512-BF16 hosts) into a layout whose kernel has no backward
            if hasattr(module, "support_avx512bf16_for_cpu"):  # pass: training after generation would lose
                module.support_avx512bf16_for_cpu = False     # the gradients through the frozen 4-bit layers
    return tok, base


def add_adapter(base, cfg: Config, adapter_dir: str | None = None):
    """LoRA policy (trainable adapter, frozen base, dropout 0) and a float32 value head."""
    import warnings
    with warnings.catch_warnings():  # peft's own deprecation warnings (its import, its calls into transformers)
        warnings.filterwarnings("ignore", message=".*(script_method|is_gradient_checkpointing).*is deprecated")
        from peft import LoraConfig, PeftModel, get_peft_model
        base.requires_grad_(False)
        if cfg.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            base.enable_input_require_grads()
        if adapter_dir:
            policy = PeftModel.from_pretrained(base, adapter_dir, is_trainable=True)
        else:
            targets = [t for t in cfg.lora_targets.split(",") if t]
            policy = get_peft_model(base, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                     target_modules=targets, task_type="CAUSAL_LM"))
    value_head = nn.Linear(base.config.hidden_size, 1, dtype=torch.float32, device=base.device)
    nn.init.zeros_(value_head.weight), nn.init.zeros_(value_head.bias)
    return policy, value_head


def drop_shared_padding(ids, attention_mask):
    """Drop the padding columns that every row has, left and right: not computed, and results change by
    float rounding only (positions come from the mask, attention is causal). Prompts are left-padded to the
    longest of the step or evaluation, responses right-padded to the step's longest. -> ids, mask, n right"""
    used = attention_mask.any(0).int()                                               # (T,)
    left, right = int(used.argmax()), int(used.flip(0).argmax())
    return ids[:, left:len(used) - right], attention_mask[:, left:len(used) - right], right


def forward(policy, value_head, input_ids, attention_mask, n_gen: int, temperature: float):
    """Log-prob of each of the last n_gen tokens, the policy entropy there, and V(s_t) before it, from
    one forward pass (the value head is "shared"). Logits are divided by the sampling temperature, as
    in sampling (SPEC 5). Positions come from the attention mask, so left padding does not shift them."""
    input_ids, attention_mask, n_pad = drop_shared_padding(input_ids, attention_mask)  # (B, T)
    n_gen -= n_pad  # response columns no row uses are not computed: their outputs are 0 (masked anyway)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)                     # (B, T)
    out = policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                 output_hidden_states=True, logits_to_keep=n_gen + 1, use_cache=False)
    logits = out.logits[:, :-1].float() / temperature                               # (B, G, V)
    logp_all = torch.log_softmax(logits, dim=-1)                                     # (B, G, V)
    logprobs = logp_all.gather(-1, input_ids[:, -n_gen:, None]).squeeze(-1)         # (B, G)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)                               # (B, G)
    hidden = out.hidden_states[-1][:, -n_gen - 1:-1].float()                         # (B, G, H)
    values = value_head(hidden).squeeze(-1)                                          # (B, G)
    return tuple(nn.functional.pad(x, (0, n_pad)) for x in (logprobs, entropy, values))


# ------------------------------------------------------------------------- the method ---

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


@torch.no_grad()
def logprobs_before_update(policy, value_head, b_ids, b_attn, n_gen: int, minibatches: list, temperature: float):
    """log pi_old and V of the rollouts, and log pi_ref: the same model with the adapter disabled.
    Computed over the very minibatches the update will use, so that a row is computed with the same
    shapes both times: in bf16, other shapes round otherwise and the first ratio would not be 1.
    -> logprobs, ref_logprobs, entropy, values, each (N, G)"""
    policy.eval()
    N = b_ids.shape[0]
    b_logprobs, b_ref_logprobs, b_entropy, b_values = (torch.zeros(N, n_gen, device=b_ids.device) for _ in range(4))
    for mb in minibatches:
        b_logprobs[mb], b_entropy[mb], b_values[mb] = forward(policy, value_head, b_ids[mb], b_attn[mb], n_gen, temperature)
        with policy.disable_adapter():
            b_ref_logprobs[mb] = forward(policy, value_head, b_ids[mb], b_attn[mb], n_gen, temperature)[0]
    return b_logprobs, b_ref_logprobs, b_entropy, b_values


def ppo_update(policy, value_head, optimizer, params, batch: dict, minibatches: list, cfg: Config) -> dict:
    """Eq. 1 on the tokens FGO keeps (b_fgo) plus the value loss on every generated token (b_mask),
    cfg.ppo_epochs passes over the step's minibatches, in a new order each pass. -> mean statistics"""
    policy.train()
    stats = {"pg_loss": [], "vf_loss": [], "approx_kl": [], "clipfrac": [], "skipped": 0}
    for _ in tqdm(range(cfg.ppo_epochs), desc="update", leave=False):
        for k in torch.randperm(len(minibatches)).tolist():
            mb = minibatches[k]
            new_logprobs, _, new_values = forward(policy, value_head, batch["ids"][mb], batch["attn"][mb],
                                                  batch["n_gen"], cfg.temperature)              # (B, G)
            pg_loss, _, approx_kl, clipfrac = policy_loss(                                      # Eq. 1, FGO's tokens
                new_logprobs, batch["logprobs"][mb], batch["advantages"][mb], batch["fgo"][mb], cfg.clip_coef)
            vf_loss = value_loss(new_values, batch["values"][mb], batch["returns"][mb],       # PPO practice
                                 batch["mask"][mb], cfg.vf_clip)
            loss = pg_loss + cfg.vf_coef * vf_loss
            if not torch.isfinite(loss):
                stats["skipped"] += 1
                continue
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            for name, value in (("pg_loss", pg_loss), ("vf_loss", vf_loss), ("approx_kl", approx_kl), ("clipfrac", clipfrac)):
                stats[name].append(value.item())
    return {name: sum(v) / max(len(v), 1) if isinstance(v, list) else v for name, v in stats.items()}


# ---------------------------------------------------------------------- rollout parts ---

FENCE = "```"  # an instruct prompt ends in an opening fence; the program ends at the closing one


def is_chat(tok) -> bool:
    return bool(getattr(tok, "chat_template", None))


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


@torch.no_grad()
def generate(policy, tok, prompt_ids, prompt_mask, n_new: int, temperature: float, top_p: float,
             batch_size: int, desc: str):
    """Sample continuations in batches; returns response ids (N, G) right-padded, lengths (N,) as
    response_length counts them. A chat model stops at the closing fence (stop string)."""
    policy.eval()
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature > 0 else dict(do_sample=False)
    if is_chat(tok):
        sampling.update(stop_strings=[FENCE], tokenizer=tok)
    chunks, lengths = [], []
    for i in tqdm(range(0, len(prompt_ids), batch_size), desc=desc, leave=False):
        ids, am = prompt_ids[i:i + batch_size], prompt_mask[i:i + batch_size]
        ids, am, _ = drop_shared_padding(ids, am)
        out = policy.generate(input_ids=ids, attention_mask=am, max_new_tokens=n_new, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id, cache_implementation="static", disable_compile=True,
                              **sampling)  # a preallocated KV cache: no copy of the cache per token
        resp = out[:, ids.shape[1]:]                                                 # (b, g)
        chunks.append(resp)
        lengths += [response_length(tok, row) for row in resp.tolist()]
    width = max(c.shape[1] for c in chunks)
    resp = torch.cat([nn.functional.pad(c, (0, width - c.shape[1]), value=tok.pad_token_id) for c in chunks])
    return resp, torch.tensor(lengths, device=resp.device)                           # (N, G), (N,)


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


def prompt_prefix(canonical_prefix: str) -> str:
    """The canonical prefix as it enters the prompt: without its final line break, which the policy
    writes. BPE tokenizers merge a newline with the next line's indentation ("\\n   " is one token),
    so a prompt ending in "\\n" is a token boundary the model never saw in training (on the tiny
    model, 97% of the first PPO step's rollouts then failed to compile; 53% with this)."""
    return canonical_prefix.rstrip()


def program_text(gen_text: str, tok) -> str:
    """The generated code: an instruct prompt (chat template) ends in an opening fence: cut at the closing one."""
    return gen_text.split(FENCE)[0] if is_chat(tok) else gen_text


def show_rollout(problem, stage: int, prefix: str, pieces: list[str], mask: list[float], result) -> str:
    """A rollout as a student should see it: the canonical prefix (prompt, no gradient), then the
    generated tokens, with the ones FGO masks out of the policy loss inside ⟦ ⟧."""
    marked = "".join(p if keep else f"⟦{p}⟧" for p, keep in zip(pieces, mask))
    lines = (prefix + marked).splitlines() or [""]
    n_prefix = len(prefix.splitlines())
    body = "\n".join(f"{i:4d} {'|' if i <= n_prefix else '+'} {line}" for i, line in enumerate(lines, 1))
    return (f"--- problem {problem.problem_id} | stage {stage} | {result.status} | reward {result.reward:+.1f} | "
            f"executed lines {sorted(result.executed_lines)}\n"
            f"(lines marked | are the canonical prefix of the stage, + are generated; ⟦masked by FGO⟧)\n{body}")


def score(programs: list[str], problems: list, cfg: Config) -> list:
    return sandbox.run_batch([(code, p.tests) for code, p in zip(programs, problems)],
                             timeout=cfg.timeout, progress=True)


WARM_START_SAVE_EVERY = 50


def warm_start(model, tok, problems: list, cfg: Config, rng: random.Random, device, checkpoint: Path):
    """Supervised fine-tuning on prompt + canonical solution (loss on the solution only). Every
    WARM_START_SAVE_EVERY steps its state goes to `checkpoint` (a file); a warm start that finds it there
    continues from it. The caller deletes it once the warm start's result is saved."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.sft_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / cfg.sft_steps)))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    start = 0
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["weights"], strict=False)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        rng.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
        start = state["step"]
        tqdm.write(f"warm start: continuing from its checkpoint at step {start}")
    model.train()
    bar = tqdm(range(start, cfg.sft_steps), desc="warm start (SFT)", initial=start, total=cfg.sft_steps)
    for step in bar:
        batch = rng.sample(problems, min(cfg.sft_batch_size, len(problems)))
        prompts = [curriculum.build_prompt(p, tok) for p in batch]
        ending = FENCE + tok.eos_token if is_chat(tok) else tok.eos_token  # a chat model closes its fence
        full = [pr + p.canonical_solution + ending for pr, p in zip(prompts, batch)]
        enc = tok(full, return_tensors="pt", padding=True, padding_side="right", truncation=True,
                  max_length=cfg.max_prompt_tokens + cfg.max_new_tokens, add_special_tokens=False).to(device)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)      # (B, T)
        for row, pr in enumerate(prompts):  # no loss on the prompt
            labels[row, :len(tok(pr, add_special_tokens=False)["input_ids"])] = -100
        loss = model(**enc, labels=labels).loss
        opt.zero_grad(), loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step(), sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % WARM_START_SAVE_EVERY == 0 and step + 1 < cfg.sft_steps:
            weights = {name: p.detach() for name, p in model.named_parameters() if name in trainable}
            torch.save({"weights": weights, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "python_rng": rng.getstate(), "torch_rng": torch.get_rng_state(), "step": step + 1},
                       checkpoint.with_suffix(".tmp"))
            checkpoint.with_suffix(".tmp").replace(checkpoint)  # whole or not at all
    model.eval()


def evaluate(policy, tok, problems: list, cfg: Config, device, tag: str) -> dict:
    """pass@1 at stage 0 (no canonical prefix), per difficulty and overall: the mean pass rate of
    --eval-samples samples per problem at --eval-temperature (Chen et al. 2021's unbiased estimate
    for k = 1), their mean reward (Eq. 3: on fixed problems, unlike the rollouts' under CCCS), and
    greedy decoding's pass rate ("greedy")."""
    prompts = [fit_prompt(tok, p, "", cfg.max_prompt_tokens)[0] for p in problems]
    order = sorted(range(len(problems)), key=lambda i: len(prompts[i]))  # batches of similar lengths pad less
    problems = [problems[i] for i in order]
    ids, am = tokenize_prompts(tok, [prompts[i] for i in order], device)
    runs = [("greedy", 0.0, 1)] + [("pass@1", cfg.eval_temperature, cfg.eval_samples)] * (cfg.eval_temperature > 0)
    table: dict[str, dict[str, list[float]]] = {d: {} for d in ("overall", *curriculum.DIFFICULTIES)}  # -> run -> rewards
    for key, temperature, n in runs:
        resp, lengths = generate(policy, tok, ids.repeat_interleave(n, 0), am.repeat_interleave(n, 0), cfg.max_new_tokens,
                                 temperature, cfg.eval_top_p, cfg.gen_batch_size, f"eval {tag}, {key}")
        programs = [program_text(tok.decode(r[:k], skip_special_tokens=True), tok)
                    for r, k in zip(resp.tolist(), lengths.tolist())]
        samples = [p for p in problems for _ in range(n)]
        for p, r in zip(samples, score(programs, samples, cfg)):
            for d in (p.difficulty, "overall"):
                table[d].setdefault(key, []).append(r.reward)
    rate, mean = (lambda xs: sum(x == 1.0 for x in xs) / len(xs)), (lambda xs: sum(xs) / len(xs))
    report = {d: {"pass@1": rate(c.get("pass@1", c["greedy"])), "reward": mean(c.get("pass@1", c["greedy"])),
                  "greedy": rate(c["greedy"]), "n": len(c["greedy"])} for d, c in table.items() if c}
    tqdm.write(f"pass@1 ({tag})  " + "  ".join(f"{d}: {v['pass@1']:.3f} (greedy {v['greedy']:.3f}, reward "
                                               f"{v['reward']:+.3f}, n={v['n']})" for d, v in report.items()))
    return report


# ----------------------------------------------------------------- checkpoint, resume ---

def save_checkpoint(run_dir: Path, policy, value_head, optimizer, cur, step: int, rng: random.Random):
    """Written to a temporary folder, then renamed: a crash never leaves half a checkpoint."""
    tmp, final, old = run_dir / "checkpoint.tmp", run_dir / "checkpoint", run_dir / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp / "adapter")  # loadable with PeftModel.from_pretrained
    torch.save({"value_head": value_head.state_dict(), "optimizer": optimizer.state_dict(), "python_rng": rng.getstate(),
                "torch_rng": torch.get_rng_state(),  # and CUDA's: sampling on a GPU draws from it
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}, tmp / "state.pt")
    (tmp / "progress.json").write_text(json.dumps({"step": step, "curriculum": cur.state_dict()}))
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(ckpt: Path, value_head, optimizer, cur, rng: random.Random) -> int:
    """Value head, optimizer, curriculum and every RNG as saved (the adapter is loaded with the model). -> step"""
    state = torch.load(ckpt / "state.pt", weights_only=False)
    value_head.load_state_dict(state["value_head"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    rng.setstate(state["python_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    progress = json.loads((ckpt / "progress.json").read_text())
    cur.load_state_dict(progress["curriculum"])
    return progress["step"]


def check_run_dir(cfg: Config) -> int:
    """Before anything loads: a new run never reuses a directory by accident, a resumed one has something
    left to do. -> the step of the run's checkpoint (0: none)"""
    run_dir = Path(cfg.out)
    if not cfg.resume:
        if run_dir.exists() and any(run_dir.iterdir()) and not cfg.overwrite:
            raise UsageError(f"run directory {run_dir} exists: pass --resume {run_dir} to continue it, "
                             f"--overwrite to start again, or --out NEW_DIR")
        return 0
    progress = run_dir / "checkpoint" / "progress.json"
    step = json.loads(progress.read_text())["step"] if progress.exists() else 0
    evaluated = not cfg.eval or (run_dir / f"eval_step{cfg.steps}.json").exists()
    if step > cfg.steps or step == cfg.steps and evaluated and step > 0:
        raise UsageError(f"run {run_dir} is finished at step {step}: pass --resume {run_dir} --steps N with N > {step} "
                         f"to train it further")
    return step


def prepare_run_dir(cfg: Config) -> Path:
    """After the model loaded: the run directory and its config.json (a resumed run keeps its own)."""
    run_dir = Path(cfg.out)
    if cfg.resume:
        return run_dir
    if run_dir.exists() and cfg.overwrite:
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    return run_dir


def keep_metrics_until(metrics: Path, step: int) -> None:
    """A resumed run appends to metrics.jsonl from its checkpoint's step on: rows written after that
    checkpoint (an interrupted run's last steps) are dropped first, so no step appears twice."""
    if metrics.exists():
        rows = [line for line in metrics.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        metrics.write_text("".join(row + "\n" for row in rows))


# ------------------------------------------------------------------------------ train ---

def train(cfg: Config):
    """The whole run; returns (run directory, policy, value head) for tests and notebooks. Ctrl-C raises
    Interrupted, which says where the run stopped and how to continue it."""
    import logging, warnings
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar(), hf_logging.set_verbosity_error(), hub_logging.set_verbosity_error()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    problems = curriculum.load_problems(cfg.data)
    evals = {"train": problems}  # --eval: pass@1 on the training problems and on held-out ones
    if cfg.eval and Path(cfg.test_data).resolve() != Path(cfg.data).resolve():
        evals["test"] = curriculum.load_problems(cfg.test_data)
    start = check_run_dir(cfg)
    run_dir, ckpt = Path(cfg.out), Path(cfg.out) / "checkpoint"
    progress = {"where": "while loading the model", "saved": "none"}  # what Ctrl-C's one line says
    try:
        # 1. Load the model (nothing is written before it loaded). `tiny` is built and warm-started
        #    here (--sft-seed), then saved as the base model.
        tiny = is_tiny(cfg.model)
        if cfg.model != "tiny":
            tok, base = load_base(cfg.model, cfg, device, tiny=tiny)
        prepare_run_dir(cfg)
        if start:
            tqdm.write(f"resuming {run_dir} from its checkpoint at step {start} (to step {cfg.steps})")
        sft_checkpoint = run_dir / "warm_start.pt"
        if cfg.model == "tiny":
            if not (run_dir / "base").exists():
                progress.update(where="during the warm start", saved=f"the warm start's, every {WARM_START_SAVE_EVERY} steps")
                tok, model = build_tiny(problems, cfg.sft_seed)
                warm_start(model.to(device), tok, problems, cfg, random.Random(cfg.sft_seed), device, sft_checkpoint)
                model.save_pretrained(run_dir / "base")
                tok.save_pretrained(run_dir / "base")
                (run_dir / "base" / TINY_MARKER).write_text(json.dumps({"sft_seed": cfg.sft_seed, "sft_steps": cfg.sft_steps}))
                sft_checkpoint.unlink(missing_ok=True)
            tok, base = load_base(str(run_dir / "base"), cfg, device, tiny=True)
        rng = random.Random(cfg.seed)  # RL's RNG, in the same state whether the base was warm-started
        torch.manual_seed(cfg.seed)     # in this run or loaded (`--model RUN/base` then repeats the run exactly)
        resuming = ckpt.exists()
        policy, value_head = add_adapter(base, cfg, str(ckpt / "adapter") if resuming else None)
        if not tiny and cfg.sft_steps and not resuming:  # departure 2: SFT trains the adapter
            progress.update(where="during the warm start", saved=f"the warm start's, every {WARM_START_SAVE_EVERY} steps")
            warm_start(policy, tok, problems, cfg, random.Random(cfg.sft_seed), device, sft_checkpoint)
        params = [p for p in policy.parameters() if p.requires_grad] + list(value_head.parameters())
        optimizer = torch.optim.AdamW([{"params": params[:-2], "lr": cfg.lr}, {"params": params[-2:], "lr": cfg.vf_lr}],
                                      eps=1e-5, weight_decay=0.0)
        cur = curriculum.Curriculum(problems, alpha=cfg.cccs_alpha, rho_t=cfg.cccs_threshold, enabled=not cfg.no_cccs)
        if resuming:
            start = load_checkpoint(ckpt, value_head, optimizer, cur, rng)
        else:  # step 0: the warm start's result, so an interrupted run never redoes it
            save_checkpoint(run_dir, policy, value_head, optimizer, cur, 0, rng)
            sft_checkpoint.unlink(missing_ok=True)
        progress["saved"] = f"step {start}"
        keep_metrics_until(run_dir / "metrics.jsonl", start)
        ppo_loop(cfg, run_dir, device, problems, evals, tok, policy, value_head, optimizer, params, cur, rng, start, progress)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted {progress['where']} (last checkpoint: {progress['saved']}); continue with: "
                          f"python3 stepcoder.py --resume {run_dir}") from None
    return run_dir, policy, value_head


def ppo_loop(cfg: Config, run_dir: Path, device, problems, evals, tok, policy, value_head, optimizer, params, cur,
             rng, start: int, progress: dict):
    """PPO steps start+1 .. cfg.steps; `progress` says where the run is, for Ctrl-C's message."""
    def run_eval(step: int):  # pass@1 at stage 0 on each problem set, into eval_step<N>.json. Its own
        # RNG, seeded with 0 at every evaluation of every run: a run with --eval trains exactly as one
        # without, and all evaluations share their random numbers (a change is the model's, not the draw's)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0)
            report = {k: evaluate(policy, tok, ps, cfg if k == "train" else replace(cfg, eval_temperature=0.0), device,
                                  f"step {step}, {k}") for k, ps in evals.items()}  # held-out problems: greedy only
        (run_dir / f"eval_step{step}.json").write_text(json.dumps(report, indent=1))
    if cfg.eval and start == 0 and not (run_dir / "eval_step0.json").exists():
        progress["where"] = "during the evaluation before RL"
        run_eval(0)

    for step in range(start + 1, cfg.steps + 1):
        progress["where"] = f"at step {step}"
        # 2. Curriculum prompt: each problem's instruction, then the canonical prefix of its stage.
        batch = [p for p in rng.sample(problems, min(cfg.problems_per_step, len(problems)))
                 for _ in range(cfg.samples_per_problem)]
        prefixes = [prompt_prefix(cur.prefix(p.problem_id)) for p in batch]
        stages = [cur.stage(p.problem_id) for p in batch]
        prompts = [fit_prompt(tok, p, pre, cfg.max_prompt_tokens) for p, pre in zip(batch, prefixes)]
        prompt_ids, prompt_mask = tokenize_prompts(tok, [text for text, _ in prompts], device)

        # 3. Rollout.
        t0 = time.time()
        b_resp, b_len = generate(policy, tok, prompt_ids, prompt_mask, cfg.max_new_tokens, cfg.temperature,
                                 cfg.top_p, cfg.gen_batch_size, "generate")                   # (N, G), (N,)
        t_gen = time.time() - t0
        decoded = [decode_with_offsets(tok, r[:n]) for r, n in zip(b_resp.tolist(), b_len.tolist())]
        gen_code = [program_text(text, tok) for text, _ in decoded]

        # 4. Sandbox: the reward is for the whole program, canonical prefix + generated code.
        t0 = time.time()
        results = score([pre + code for pre, code in zip(prefixes, gen_code)], batch, cfg)
        t_score = time.time() - t0
        for p, r, stage in zip(batch, results, stages):  # rollouts from a stage already left are ignored
            cur.update(p.problem_id, r.status == "pass", stage=stage)

        # 5. The masking convention. The tensors below hold generated tokens only (G columns):
        #    the prompt and the canonical prefix are never actions, so they never enter a loss.
        #    b_mask: 1 on the response's actions (response_length: up to and including EOS; a chat
        #            model's up to the program's last token), 0 after them -> value loss, KL
        #            penalty, GAE and whitening; the reward lands on its last 1.
        #    b_fgo:  b_mask, and 0 on tokens whose lines the unit tests never executed (FGO)
        #            -> the policy loss only. With --no-fgo, b_fgo == b_mask.
        N, G = b_resp.shape
        b_mask = (torch.arange(G, device=device)[None] < b_len[:, None]).float()       # (N, G)
        b_fgo = b_mask.clone()
        if not cfg.no_fgo:
            for i, ((_, ends), code, pre, r, n) in enumerate(zip(decoded, gen_code, prefixes, results, b_len.tolist())):
                eos = n - 1 if b_resp[i, n - 1] == tok.eos_token_id else None
                b_fgo[i, :n] = torch.tensor(rollout_fgo_mask(ends, code, pre, r, eos))
        for i in range(min(cfg.show_rollouts, N)):
            text, ends = decoded[i]
            pieces = [text[a:b] for a, b in zip([0] + ends[:-1], ends)]
            tqdm.write(show_rollout(batch[i], stages[i], prefixes[i], pieces, b_fgo[i].tolist(), results[i]))
        b_ids = torch.cat([prompt_ids, b_resp], 1)                                     # (N, P+G)
        b_attn = torch.cat([prompt_mask, b_mask.long()], 1)                            # (N, P+G)
        b_scores = torch.tensor([r.reward for r in results], device=device)           # (N,)

        # 6. Log-probs of the policy and the reference (adapter off), and values, before the update,
        #    over the minibatches the update will use.
        t0 = time.time()
        minibatches = torch.randperm(N, device=device).split(cfg.minibatch_size)
        b_logprobs, b_ref_logprobs, b_entropy, b_values = logprobs_before_update(
            policy, value_head, b_ids, b_attn, G, minibatches, cfg.temperature)         # (N, G) each

        # 7. Rewards with the KL penalty (Eq. 4), GAE (Eq. 2), whitened advantages.
        b_rewards, b_kl = kl_penalized_rewards(b_logprobs, b_ref_logprobs, b_scores, b_mask, cfg.kl_coef)
        b_values = b_values * b_mask
        b_advantages, b_returns = compute_gae(b_rewards, b_values, b_mask, cfg.gamma, cfg.lam)
        b_advantages = whiten(b_advantages, b_mask)

        # 8. PPO update: a few epochs over the minibatches.
        rollouts = {"ids": b_ids, "attn": b_attn, "n_gen": G, "logprobs": b_logprobs, "values": b_values,
                    "advantages": b_advantages, "returns": b_returns, "mask": b_mask, "fgo": b_fgo}
        stats = ppo_update(policy, value_head, optimizer, params, rollouts, minibatches, cfg)
        t_update = time.time() - t0

        # 9. Log, checkpoint.
        mean = lambda xs: sum(xs) / max(len(xs), 1)
        verdicts = [r.status for r in results]
        var_r = torch.var(b_returns[b_mask.bool()])
        metrics = {
            "step": step, "reward_mean": b_scores.mean().item(), "pass_rate": verdicts.count("pass") / N,
            "reward_stage0": mean([r.reward for r, s in zip(results, stages) if s == 0]) if 0 in stages else None,
            **{f"frac_{v}": verdicts.count(v) / N for v in ("pass", "wrong_answer", "runtime_error", "timeout", "compile_error")},
            "kl": (b_kl.sum(1)).mean().item(), "approx_kl": stats["approx_kl"], "clipfrac": stats["clipfrac"],
            "entropy": masked_mean(b_entropy, b_mask).item(), "pg_loss": stats["pg_loss"], "vf_loss": stats["vf_loss"],
            "explained_var": (1 - torch.var((b_returns - b_values)[b_mask.bool()]) / var_r).item() if var_r > 0 else 0.0,
            "stage_hist": {str(k): v for k, v in sorted(cur.stage_histogram().items())},
            "fgo_kept": (b_fgo.sum() / b_mask.sum()).item(), "gen_tokens_per_s": b_mask.sum().item() / max(t_gen, 1e-9),
            "prompts_shortened": sum(shortened for _, shortened in prompts),
            "t_generate": t_gen, "t_score": t_score, "t_update": t_update, "skipped_updates": stats["skipped"],
        }
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        tqdm.write(f"step {step} | reward {metrics['reward_mean']:+.3f} | pass {metrics['pass_rate']:.3f} | "
                   f"kl {metrics['kl']:.3f} | clipfrac {metrics['clipfrac']:.3f} | fgo_kept {metrics['fgo_kept']:.2f} | "
                   f"stages {metrics['stage_hist']} | {t_gen:.0f}s gen {t_score:.0f}s score {t_update:.0f}s update")
        if step % cfg.save_every == 0 or step == cfg.steps:
            save_checkpoint(run_dir, policy, value_head, optimizer, cur, step, rng)
            progress["saved"] = f"step {step}"

    if cfg.eval and cfg.steps > 0:  # (--steps 0: the warm start alone, evaluated above)
        progress["where"] = f"during the evaluation at step {cfg.steps}"
        run_eval(cfg.steps)


def main(argv: list[str] | None = None) -> int:
    try:
        train(parse_config(argv))
    except (UsageError, curriculum.DataError) as e:
        print(f"stepcoder: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
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
