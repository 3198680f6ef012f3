"""Model loading for stepcoder.py: the tiny CPU model, a pretrained model (hub id or local directory)
in 4-bit with a LoRA adapter and the value head; the model that samples (the merged sampler, and
`decode`: one forward per token with a KV cache, finished rows leaving the batch); the warm start.

    python -c "import curriculum; from support import models; print(models.build_tiny(curriculum.load_problems('data/train.json'), 0)[1])"

What it implements: the policy of the paper's PPO (§3.1) as this project builds it: a LoRA adapter on a
frozen (4-bit NF4) base model, a value head of one linear layer on the same backbone, and the reference
policy as the same model with the adapter disabled; the SFT warm start the paper starts RL from.

Where this departs from the paper, and why:
    1. LoRA on a 4-bit base: a LoRA adapter on a 4-bit NF4 base instead of full fine-tuning: the paper
       trains 6.7B on many GPUs; we target 1.3B on one 24 GB GPU; only the adapter and the value head
       learn. 4-bit compute is bf16 or float16 on CUDA (departure 5), float32 on the CPU (`--quantize
       nf4`, for tests). `tiny` stays full precision float32.
    2. The reference is "adapter off". For `tiny` the warm start trains the base weights before the
       adapter exists, so the reference is exactly the SFT model (as in the paper). A pretrained 4-bit
       base cannot be trained: there `--sft-steps` trains the adapter itself and the reference stays
       the base model (an instruct model is already SFT: no warm start by default).
    3. A shared value head: it reads the policy's backbone (paper: a separate critic), to save memory.
    4. A merged sampler: rollouts are sampled by a plain copy of the model whose weights are the
       policy's, merged (`make_sampler`, `--sampler merged`): base weight (dequantized where 4-bit) +
       LoRA's B A. Decoding then runs no 4-bit or LoRA kernels, the slow part of generation, at the cost
       of a copy of the base in the compute dtype (2.7 GB for 1.3B, bf16 or float16). Its log-probs differ
       from the training forward's by rounding only; PPO's ratio is computed from the training forward's.
    5. float16 before Ampere: a pretrained model on CUDA computes in bf16 where the card has it natively
       (compute capability 8.0 and up: A100, A10, L4, RTX 30xx and newer, H100), else in float16 (Colab's
       T4, V100; `precision`), which have no bf16 tensor cores (bf16 there is emulated, slowly, if at all):
       the same 2 bytes (the memory plan holds), but 5 exponent bits, not 8. So the adapter and the value
       head stay float32 (peft's `autocast_adapter_dtype` upcasts LoRA weights; the value head is made
       so), the losses are float32 (computed from float32 copies of the logits and
       hidden states), and a loss scaler (`loss_scaler`: torch.amp.GradScaler) multiplies the loss by 2^16
       before the backward pass and divides the gradients back before the clip: a LoRA weight's gradient
       is float32, but it is computed from the gradient that flowed back through the float16 activations
       above it, and that one, a mean over thousands of tokens, underflows float16 (subnormal below 6e-5,
       zero below 6e-8) without it; 4-bit NF4 computes in float16 too, so the 4-bit path needs it as much
       as `--quantize none`. A step whose gradient overflowed is skipped and the scale halved (not counted
       in the `skipped` metric); the scale is not checkpointed (a resumed run starts again at 2^16, the
       scale it would have had unless an overflow halved it or 2000 clean steps doubled it). The merged
       sampler is float16. Not yet run on a pre-Ampere GPU.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

import curriculum
from curriculum import FENCE, count_tokens, fit_prompt, is_chat
from support import distributed
from support.config import MODEL_ALIASES, TINY_MARKER, Config, UsageError, is_tiny
from support.runs import Run, prepare_run_dir


@dataclass
class Agent:
    """What PPO trains and samples with."""
    tok: object               # the tokenizer
    policy: nn.Module         # the base model with its LoRA adapter; the reference: the adapter disabled
    value_head: nn.Linear     # hidden size -> 1, float32, on the policy's last hidden state
    sampler: nn.Module        # samples rollouts and evaluations: the policy, or its merged copy
    device: torch.device
    scaler: torch.amp.GradScaler  # the update's loss scaler: float16 compute only, else it does nothing


def load_agent(cfg: Config, sft_problems: list, run: Run, device, resuming: bool) -> Agent:
    """The model as RL starts: a pretrained model loaded (nothing is written before it loaded), or tiny
    built (its tokenizer trained on `sft_problems`) and warm-started on `sft_problems` by rank 0 and saved as
    RUN/base; then the adapter (a resumed run's from its checkpoint), seeded with --seed, the value head, and
    the sampler. Every rank starts from rank 0's."""
    warm_starting = {"where": "during the warm start", "saved": f"the warm start's, every {WARM_START_SAVE_EVERY} steps"}
    sft_checkpoint = run.dir / "warm_start.pt"
    if cfg.model != "tiny":
        tok, base = load_base(cfg.model, cfg, device, tiny=is_tiny(cfg.model))
    if distributed.is_main():
        prepare_run_dir(cfg)
    if cfg.model == "tiny":  # rank 0 builds it (a base a crash left unfinished: again), every rank loads it
        if distributed.is_main() and not (run.dir / "base" / TINY_MARKER).is_file():
            run.progress.update(warm_starting)
            tok, model = build_tiny(sft_problems, cfg.sft_seed)
            warm_start(model.to(device), tok, sft_problems, cfg, random.Random(cfg.sft_seed), device, sft_checkpoint)
            save_tiny_base(model, tok, run.dir / "base", cfg)
            sft_checkpoint.unlink(missing_ok=True)
        distributed.barrier()
        tok, base = load_base(str(run.dir / "base"), cfg, device, tiny=True)
    torch.manual_seed(cfg.seed)  # the adapter's initial weights and RL's sampling: the same whether the base
    adapter = str(run.dir / "checkpoint" / "adapter") if resuming else None  # was warm-started here or loaded
    policy, value_head = add_adapter(base, cfg, adapter)
    if not is_tiny(cfg.model) and cfg.sft_steps and not resuming and distributed.is_main():
        run.progress.update(warm_starting)  # departure 'the reference is "adapter off"': SFT trains the adapter
        warm_start(policy, tok, sft_problems, cfg, random.Random(cfg.sft_seed), device, sft_checkpoint)
    distributed.broadcast_params([p for p in policy.parameters() if p.requires_grad] + list(value_head.parameters()))
    return Agent(tok, policy, value_head, make_sampler(policy, cfg), device, loss_scaler(policy, device))


def make_optimizer(agent: Agent, cfg: Config) -> torch.optim.Optimizer:
    """AdamW over the adapter (--lr) and the value head (--vf-lr): the only weights that learn."""
    adapter_params = [p for p in agent.policy.parameters() if p.requires_grad]
    groups = [{"params": adapter_params, "lr": cfg.lr}, {"params": list(agent.value_head.parameters()), "lr": cfg.vf_lr}]
    return torch.optim.AdamW(groups, eps=1e-5, weight_decay=0.0)


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
    """The warm-started tiny model as a local model directory, marked so that `--model DIR` is tiny too: written
    to DIR.tmp, the marker last, then renamed, so that DIR is whole or absent (an unmarked DIR, which a crash
    left before saves were atomic, is replaced)."""
    temporary = directory.with_name(directory.name + ".tmp")
    for leftover in (temporary, directory):
        shutil.rmtree(leftover, ignore_errors=True)
    model.save_pretrained(temporary)
    tok.save_pretrained(temporary)
    (temporary / TINY_MARKER).write_text(json.dumps({"sft_seed": cfg.sft_seed, "sft_steps": cfg.sft_steps}))
    temporary.rename(directory)


def quiet_libraries() -> None:
    """transformers, huggingface_hub and bitsandbytes print progress bars and notices a run does not need.
    Warnings stay on (peft's own deprecations are silenced where add_adapter calls it)."""
    import logging
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    hub_logging.set_verbosity_error()


def precision(cfg: Config, device_type: str, tiny: bool) -> tuple[bool, torch.dtype]:
    """(4-bit NF4?, compute dtype). --quantize auto: a pretrained model on CUDA loads in 4-bit NF4; tiny, and
    any model on the CPU, stays full precision float32. --quantize nf4 forces 4-bit (also on the CPU, for
    tests), --quantize none forbids it. A pretrained model on CUDA computes in bf16 where the card has it
    natively (compute capability 8.0 and up: Ampere and newer), else in float16 (T4, V100; departure
    'float16 before Ampere')."""
    use_4bit = cfg.quantize == "nf4" or (cfg.quantize == "auto" and device_type == "cuda" and not tiny)
    if device_type != "cuda" or tiny:
        return use_4bit, torch.float32
    return use_4bit, torch.bfloat16 if torch.cuda.get_device_capability() >= (8, 0) else torch.float16


def loss_scaler(model, device) -> torch.amp.GradScaler:
    """The loss scaler of training `model` (departure 'float16 before Ampere'): a dynamic one
    (torch.amp.GradScaler) where the model computes in float16, one that does nothing in bf16 or float32."""
    float16 = model.get_input_embeddings().weight.dtype == torch.float16
    return torch.amp.GradScaler(torch.device(device).type, enabled=float16)


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
            base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
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
    """The model that samples rollouts and evaluations (departure 'a merged sampler'): the policy itself (`--sampler
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


@torch.no_grad()
def decode(model, tok, ids, attention_mask, n_new: int, temperature: float, top_p: float):
    """Up to n_new tokens for each left-padded prompt, one forward per token with a KV cache. A row that
    finished (EOS; a chat model's closing fence, its program's end) leaves the batch with its rows of
    the cache: the last steps of a batch compute only the rows still writing (transformers' `generate`
    computes every row until the last one finishes). -> (b, g) response ids, right-padded"""
    from transformers import StaticCache
    out = torch.full((len(ids), n_new), tok.pad_token_id, device=ids.device)         # (b, n_new)
    rows = torch.arange(len(ids), device=ids.device)                                 # (r,) still writing
    cache = StaticCache(config=model.config, max_cache_len=ids.shape[1] + n_new)     # no copy per token
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)                      # (b, P)
    logits = model(input_ids=ids, attention_mask=attention_mask, position_ids=position_ids,
                   cache=cache, logits_to_keep=1).logits[:, -1].float()    # (r, V)
    for t in range(n_new):
        next_tokens = sample_next(logits, temperature, top_p)                        # (r,)
        out[rows, t] = next_tokens
        finished = next_tokens == tok.eos_token_id                                   # (r,)
        if is_chat(tok):  # the fence is 3 characters: within the last 4 tokens (a token may decode to "")
            tails = tok.batch_decode(out[rows, max(0, t - 3):t + 1], skip_special_tokens=True)
            finished |= torch.tensor([FENCE in tail for tail in tails], device=ids.device)
        if finished.all() or t == n_new - 1:
            return out[:, :t + 1]
        if finished.any():
            keep = (~finished).nonzero().squeeze(1)                                  # (r',)
            cache.reorder_cache(keep)  # keeps the cache's rows `keep` (the API beam search reorders with)
            rows = rows[keep]
            next_tokens = next_tokens[keep]
            attention_mask = attention_mask[keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], 1)  # (r, P+t+1)
        position_ids = attention_mask.sum(1, keepdim=True) - 1                       # (r, 1)
        logits = model(input_ids=next_tokens[:, None], attention_mask=attention_mask,
                       position_ids=position_ids, cache=cache).logits[:, -1].float()  # (r, V)


def sample_next(logits, temperature: float, top_p: float):
    """Greedy decoding (temperature 0), or a sample from softmax(logits / temperature) restricted to the
    nucleus: the most likely tokens whose probabilities add up to top_p (transformers' temperature and
    top-p warpers, top_k off). logits (r, V) -> (r,)"""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    sorted_logits, sorted_ids = torch.sort(logits, descending=False)                 # (r, V) rising
    outside = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p                      # (r, V) mass <= 1 - top_p
    outside[:, -1] = False  # the most likely token always stays
    logits = logits.masked_fill(outside.scatter(1, sorted_ids, outside), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1).squeeze(1)


def in_row_groups(forward, input_ids, attention_mask, rows_per_forward: int):
    """forward(input_ids, attention_mask) -> a tuple of (B, ...) tensors, computed `rows_per_forward` rows at
    a time, shortest first, so that a short row does not compute the longest one's padding (a CPU speed-up:
    --rows-per-forward; 0: one pass). The outputs are the same up to float rounding, in the rows' order,
    and a backward pass goes through every group."""
    if not 0 < rows_per_forward < len(input_ids):
        return forward(input_ids, attention_mask)
    by_length = torch.argsort(attention_mask.sum(1), stable=True)                     # (B,)
    groups = [forward(input_ids[rows], attention_mask[rows]) for rows in by_length.split(rows_per_forward)]
    back_to_batch_order = torch.argsort(by_length)                                    # (B,)
    return tuple(torch.cat(outputs)[back_to_batch_order] for outputs in zip(*groups))


WARM_START_SAVE_EVERY = 50


def sft_backward(model, input_ids, attention_mask, labels, rows_per_forward: int, scaler=None):
    """The batch's mean next-token loss over its labels (-100: none), and its gradient accumulated into
    the parameters. The right-padded rows run `rows_per_forward` at a time, shortest first (0: all at
    once): each group's mean loss, weighted by its share of the batch's target tokens, adds up to the
    batch's mean, so the gradient is the batch's up to float rounding; with a loss scaler (loss_scaler),
    the gradient is scaled by its scale. -> the loss (detached)"""
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
        (scaler.scale(group_loss) if scaler else group_loss).backward()
        loss = loss + group_loss.detach().cpu()
    return loss


def warm_start(model, tok, problems: list, cfg: Config, rng: random.Random, device, checkpoint: Path):
    """Supervised fine-tuning on prompt + canonical solution (loss on the solution only), the prompt built and
    encoded as RL's (sft_row). Every WARM_START_SAVE_EVERY steps its state goes to `checkpoint` (a file); a
    warm start that finds it there continues from it. The caller deletes it once its result is saved."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.sft_lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(warmup_then_cosine, total=cfg.sft_steps))
    start = load_warm_start(checkpoint, model, optimizer, scheduler, rng)
    scaler = loss_scaler(model, device)
    model.train()
    bar = tqdm(range(start, cfg.sft_steps), desc="warm start (SFT)", initial=start, total=cfg.sft_steps)
    for step in bar:
        batch = rng.sample(problems, min(cfg.sft_batch_size, len(problems)))
        rows = [sft_row(tok, p, cfg) for p in batch]
        encoded = tok([text for text, _ in rows], return_tensors="pt", padding=True, padding_side="right",
                      add_special_tokens=not is_chat(tok)).to(device)
        labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)  # (B, T)
        for row, (_, n_prompt) in enumerate(rows):
            labels[row, :n_prompt] = -100  # no loss on the prompt
        optimizer.zero_grad()
        loss = sft_backward(model, encoded["input_ids"], encoded["attention_mask"], labels, cfg.rows_per_forward,
                            scaler)
        scaler.unscale_(optimizer)  # the clip sees the true gradient
        nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)  # float16: no step where a gradient overflowed (the scale then halves)
        scaler.update()
        scheduler.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % WARM_START_SAVE_EVERY == 0 and step + 1 < cfg.sft_steps:
            save_warm_start(checkpoint, model, optimizer, scheduler, rng, step + 1)
    model.eval()


def sft_row(tok, problem, cfg: Config) -> tuple[str, int]:
    """One warm-start row: the prompt RL gives the problem at stage 0 (curriculum.fit_prompt), the canonical
    solution, and the end of an answer (a chat model closes its fence; then EOS). A row longer than
    --max-prompt-tokens + --max-new-tokens loses the end of its statement, as an RL prompt does, never
    its solution: the solution's tokens past --max-new-tokens come off the prompt's limit.
    -> (the row's text, the number of its prompt's tokens)"""
    answer = problem.canonical_solution + (FENCE + tok.eos_token if is_chat(tok) else tok.eos_token)
    n_answer = len(tok(answer, add_special_tokens=False)["input_ids"])
    limit = min(cfg.max_prompt_tokens, cfg.max_prompt_tokens + cfg.max_new_tokens - n_answer)
    prompt, _ = fit_prompt(tok, problem, "", limit)
    return prompt + answer, count_tokens(tok, prompt)


def warmup_then_cosine(step: int, total: int) -> float:
    """The warm start's learning-rate factor: a linear warm-up over 20 steps, then a cosine decay to 0."""
    return min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / total))


def save_warm_start(checkpoint: Path, model, optimizer, scheduler, rng: random.Random, step: int) -> None:
    """The warm start's trainable weights, optimizer, schedule and RNGs, whole or not at all."""
    weights = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    torch.save({"weights": weights, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "python_rng": rng.getstate(), "torch_rng": torch.get_rng_state(), "step": step},
               checkpoint.with_suffix(".tmp"))
    checkpoint.with_suffix(".tmp").replace(checkpoint)


def load_warm_start(checkpoint: Path, model, optimizer, scheduler, rng: random.Random) -> int:
    """An interrupted warm start's state, if `checkpoint` holds one. -> the step to continue from (0: none)"""
    if not checkpoint.exists():
        return 0
    state = torch.load(checkpoint, weights_only=False)
    model.load_state_dict(state["weights"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng.setstate(state["python_rng"])
    torch.set_rng_state(state["torch_rng"])
    tqdm.write(f"warm start: continuing from its checkpoint at step {state['step']}")
    return state["step"]
