"""Model loading for stepcoder.py: the tiny CPU model, a pretrained model (hub id or local directory)
in 4-bit with a LoRA adapter and the value head, and the supervised warm start.

    python -c "import models, curriculum; print(models.build_tiny(curriculum.load_problems('data/train.json'), 0)[1])"

What it implements: the policy of the paper's PPO (§3.1) as this project builds it: a LoRA adapter on a
frozen (4-bit NF4) base model, a value head of one linear layer on the same backbone, and the reference
policy as the same model with the adapter disabled; the SFT warm start the paper starts RL from.

Where this departs from the paper, and why:
    1. LoRA on a 4-bit NF4 base instead of full fine-tuning: the paper trains 6.7B on many GPUs; we
       target 1.3B on one 24 GB GPU; only the adapter and the value head learn. 4-bit compute is bf16
       on CUDA, float32 on the CPU (`--load-in-4bit`, for tests). `tiny` stays full precision float32.
    2. The reference policy is "adapter off". For `tiny` the warm start trains the base weights before
       the adapter exists, so the reference is exactly the SFT model (as in the paper). A pretrained
       4-bit base cannot be trained: there `--sft-steps` trains the adapter itself and the reference
       stays the base model (an instruct model is already SFT: no warm start by default).
    3. The value head shares the policy's backbone (paper: a separate critic) to save memory.
    4. Rollouts are sampled by a plain copy of the model whose weights are the policy's, merged
       (`make_sampler`, `--sampler merged`): base weight (dequantized where 4-bit) + LoRA's B A. Decoding
       then runs no 4-bit or LoRA kernels, the slow part of generation, at the cost of a copy of the base
       in the compute dtype (2.7 GB for 1.3B in bf16). Its log-probs differ from the training forward's
       by rounding only; PPO's ratio is computed from the training forward's, as before.
"""
from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

import curriculum
from support.config import MODEL_ALIASES, TINY_MARKER, Config, UsageError

FENCE = "```"  # an instruct prompt ends in an opening fence; the program ends at the closing one


def is_chat(tok) -> bool:
    """An instruct model's tokenizer carries a chat template; the tiny model's does not."""
    return bool(getattr(tok, "chat_template", None))


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


def save_tiny_base(model, tok, directory: Path, cfg: Config) -> None:
    """The warm-started tiny model as a local model directory, marked so that `--model DIR` is tiny too."""
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    (directory / TINY_MARKER).write_text(json.dumps({"sft_seed": cfg.sft_seed, "sft_steps": cfg.sft_steps}))


def quiet_libraries() -> None:
    """transformers, huggingface_hub and bitsandbytes print progress bars and notices a run does not need."""
    import logging
    import warnings
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    hub_logging.set_verbosity_error()


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
    nn.init.zeros_(value_head.weight)
    nn.init.zeros_(value_head.bias)
    return policy, value_head


def make_sampler(policy, cfg: Config):
    """The model that samples rollouts and evaluations (departure 4): the policy itself (`--sampler
    policy`), or a plain model of the same architecture in the compute dtype, holding the policy's
    merged weights once refresh_sampler has copied them."""
    if cfg.sampler == "policy":
        return policy
    from transformers import AutoModelForCausalLM
    base = policy.get_base_model()
    config = base.config.__class__.from_dict({**base.config.to_dict(), "quantization_config": None})
    devices = [base.device] if base.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.device(base.device):  # its random init must not move the
        sampler = AutoModelForCausalLM.from_config(config, dtype=base.get_input_embeddings().weight.dtype)  # run's RNG
    sampler.requires_grad_(False)
    return sampler.eval()


@torch.no_grad()
def refresh_sampler(sampler, policy) -> None:
    """The sampler's weights := the policy's: an adapted layer's weight is W + (alpha / r) B A, with W
    dequantized from 4-bit NF4 where the base is 4-bit; every other weight is copied. Called before
    each rollout and evaluation, so the sampler always holds the current adapter."""
    if sampler is policy:
        return
    from peft.tuners.lora import LoraLayer
    from peft.utils.integrations import dequantize_bnb_weight
    trained = dict(policy.get_base_model().named_modules())
    for name, param in sampler.named_parameters():
        module_name, attribute = name.rpartition(".")[::2]
        source = trained[module_name]
        adapted = isinstance(source, LoraLayer)
        weight = getattr(source.base_layer if adapted else source, attribute)
        if hasattr(weight, "quant_state"):  # 4-bit NF4
            weight = dequantize_bnb_weight(weight)
        if adapted:  # W + scale * B A of the active adapter
            weight = weight + source.get_delta_weight(policy.active_adapter)
        param.copy_(weight)


WARM_START_SAVE_EVERY = 50


def sft_backward(model, input_ids, attention_mask, labels, rows_per_forward: int):
    """The batch's mean next-token loss over its labels (-100: none), and its gradient accumulated into
    the parameters. The right-padded rows run `rows_per_forward` at a time, shortest first (0: all at
    once): each group's mean loss, weighted by its share of the batch's target tokens, adds up to the
    batch's mean, so the gradient is the batch's up to float rounding. -> the loss (detached)"""
    n_targets = (labels[:, 1:] != -100).sum()
    lengths = attention_mask.sum(1)                                                   # (B,)
    by_length = torch.argsort(lengths, stable=True)                                   # (B,)
    loss = torch.zeros(())
    for rows in by_length.split(rows_per_forward or len(input_ids)):
        width = int(lengths[rows].max())  # the group's columns past its longest row are padding
        group_labels = labels[rows, :width]                                           # (b, t)
        share = (group_labels[:, 1:] != -100).sum() / n_targets
        if share == 0:  # prompts only (cut by max_length): no target, and a mean over none is NaN
            continue
        group_loss = model(input_ids=input_ids[rows, :width], attention_mask=attention_mask[rows, :width],
                           labels=group_labels).loss * share
        group_loss.backward()
        loss = loss + group_loss.detach().cpu()
    return loss


def warm_start(model, tok, problems: list, cfg: Config, rng: random.Random, device, checkpoint: Path):
    """Supervised fine-tuning on prompt + canonical solution (loss on the solution only). Every
    WARM_START_SAVE_EVERY steps its state goes to `checkpoint` (a file); a warm start that finds it there
    continues from it. The caller deletes it once the warm start's result is saved."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.sft_lr, weight_decay=0.0)
    warmup_then_cosine = lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / cfg.sft_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_cosine)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    start = 0
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["weights"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
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
        full = [prompt + p.canonical_solution + ending for prompt, p in zip(prompts, batch)]
        enc = tok(full, return_tensors="pt", padding=True, padding_side="right", truncation=True,
                  max_length=cfg.max_prompt_tokens + cfg.max_new_tokens, add_special_tokens=False).to(device)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)      # (B, T)
        for row, prompt in enumerate(prompts):  # no loss on the prompt
            labels[row, :len(tok(prompt, add_special_tokens=False)["input_ids"])] = -100
        optimizer.zero_grad()
        loss = sft_backward(model, enc["input_ids"], enc["attention_mask"], labels, cfg.rows_per_forward)
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % WARM_START_SAVE_EVERY == 0 and step + 1 < cfg.sft_steps:
            weights = {name: p.detach() for name, p in model.named_parameters() if name in trainable}
            torch.save({"weights": weights, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "python_rng": rng.getstate(), "torch_rng": torch.get_rng_state(), "step": step + 1},
                       checkpoint.with_suffix(".tmp"))
            checkpoint.with_suffix(".tmp").replace(checkpoint)  # whole or not at all
    model.eval()
