"""The compute dtype per card (support/models.py, departure 'float16 before Ampere'), on the CPU with a faked
CUDA compute capability: bf16 from 8.0 on, float16 before; a float16 base keeps the adapter and the value
head in float32, samples in float16, and its update scales the loss (and only it does)."""
import copy
import dataclasses
import random

import pytest
import torch

import curriculum
import stepcoder
from conftest import write_problems
from support import models


def fake_capability(monkeypatch, major: int, minor: int):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))


@pytest.mark.parametrize("capability, dtype", [((9, 0), torch.bfloat16), ((8, 0), torch.bfloat16),
                                               ((7, 5), torch.float16), ((7, 0), torch.float16)])
def test_a_pretrained_model_on_cuda_computes_in_bf16_from_ampere_on_and_in_float16_before(monkeypatch, capability,
                                                                                          dtype):
    fake_capability(monkeypatch, *capability)
    hub = stepcoder.Config()
    assert models.precision(hub, "cuda", tiny=False) == (True, dtype)
    assert models.precision(dataclasses.replace(hub, quantize="none"), "cuda", tiny=False) == (False, dtype)
    assert models.precision(hub, "cpu", tiny=False) == (False, torch.float32)           # the CPU: float32
    assert models.precision(stepcoder.Config(model="tiny"), "cuda", tiny=True) == (False, torch.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The problems, the tiny model's tokenizer and model (built once: its tokenizer's training takes seconds),
    and the model saved as a local model directory (not marked tiny: it loads as a pretrained model)."""
    directory = tmp_path_factory.mktemp("dtype")
    problems = curriculum.load_problems(write_problems(directory / "p.json"))
    tok, model = models.build_tiny(problems, seed=0)
    model.save_pretrained(directory / "base")
    tok.save_pretrained(directory / "base")
    return problems, tok, model, directory / "base"


def load_as_on(monkeypatch, directory, capability, **flags):
    """The real loading path on this CPU as on a CUDA card of `capability`: load_base's precision is the
    one a CUDA device of that capability gets (the weights stay on the CPU)."""
    fake_capability(monkeypatch, *capability)
    real_precision = models.precision
    monkeypatch.setattr(models, "precision", lambda cfg, device_type, tiny: real_precision(cfg, "cuda", tiny))
    cfg = stepcoder.Config(model=str(directory), lora_r=4, **flags)
    tok, base = models.load_base(str(directory), cfg, torch.device("cpu"))
    return cfg, tok, base


@pytest.mark.parametrize("quantize", ["auto", "none"])  # auto: 4-bit NF4 with float16 compute
def test_a_float16_base_trains_a_float32_adapter_and_value_head_and_samples_in_float16(tiny, monkeypatch, quantize):
    problems, _, _, directory = tiny
    cfg, tok, base = load_as_on(monkeypatch, directory, (7, 5), quantize=quantize)
    assert base.get_input_embeddings().weight.dtype == torch.float16
    four_bit = [m for m in base.modules() if hasattr(m, "compute_dtype")]
    assert bool(four_bit) == (quantize == "auto") and all(m.compute_dtype == torch.float16 for m in four_bit)
    policy, value_head = models.add_adapter(base, cfg)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    assert {p.dtype for p in trainable} == {torch.float32}  # peft's autocast_adapter_dtype
    assert value_head.weight.dtype == value_head.bias.dtype == torch.float32
    sampler = models.make_sampler(policy, cfg)
    models.refresh_sampler(sampler, policy)
    assert {p.dtype for p in sampler.parameters()} == {torch.float16}
    assert models.loss_scaler(policy, "cpu").is_enabled()
    enc = tok([curriculum.build_prompt(p) + p.canonical_solution for p in problems[:2]], return_tensors="pt",
              padding=True, padding_side="left")
    logprobs, _, values = stepcoder.logprobs_and_values(policy, value_head, enc["input_ids"], enc["attention_mask"],
                                                        8, 1.0)
    assert logprobs.dtype == values.dtype == torch.float32  # the losses are computed in float32
    (logprobs.mean() + values.mean()).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in trainable)


def test_a_bf16_or_float32_model_has_no_loss_scale(tiny):
    model = tiny[2]
    assert not models.loss_scaler(model, "cpu").is_enabled()
    assert not models.loss_scaler(copy.deepcopy(model).to(torch.bfloat16), "cpu").is_enabled()
    assert models.loss_scaler(copy.deepcopy(model).to(torch.float16), "cpu").is_enabled()


def first_layer_gradient(tiny, dtype, scaled: bool, monkeypatch):
    """The first layer's LoRA gradient as ppo_update clips it, after one update of the tiny model computing
    in `dtype`, with the loss scaler loss_scaler gives that model (scaled) or one that does nothing.
    Advantages of 3e-3 over 192 tokens: gradients the tiny model's float16 activations cannot hold
    unscaled (1.3B's are larger per token, but flow back through 24 layers and 32256 logits)."""
    problems, tok, model, _ = tiny
    torch.manual_seed(0)
    policy, value_head = models.add_adapter(copy.deepcopy(model).to(dtype), stepcoder.Config(model="tiny", lora_r=4))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    enc = tok([p.canonical_solution for p in problems[:8]], return_tensors="pt", padding=True, padding_side="left")
    cfg = stepcoder.Config(model="tiny", ppo_epochs=1, minibatch_size=8, temperature=1.0)
    minibatches = [torch.arange(8)]
    logprobs, _, _, values = stepcoder.logprobs_before_update(policy, value_head, enc["input_ids"],
                                                              enc["attention_mask"], 24, minibatches, cfg)
    mask = torch.ones_like(logprobs)
    generator = torch.Generator().manual_seed(1)
    batch = dict(ids=enc["input_ids"], attn=enc["attention_mask"], n_gen=24, logprobs=logprobs, values=values,
                 returns=values, advantages=torch.randn(logprobs.shape, generator=generator) * 3e-3,
                 fgo=mask, mask=mask)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad] + list(value_head.parameters()))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    first_layer = {id(p) for name, p in policy.named_parameters() if p.requires_grad and ".layers.0." in name}
    clipped = []
    real_clip = torch.nn.utils.clip_grad_norm_
    def record(parameters, max_norm):
        clipped.append(torch.cat([p.grad.flatten() for p in parameters if id(p) in first_layer]).clone())
        return real_clip(parameters, max_norm)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", record)
    scaler = models.loss_scaler(policy, "cpu") if scaled else torch.amp.GradScaler("cpu", enabled=False)
    stepcoder.ppo_update(policy, value_head, optimizer, params, batch, minibatches, cfg, scaler)
    monkeypatch.undo()
    assert len(clipped) == 1
    return clipped[0]


def test_the_float16_update_scales_its_loss_so_that_early_gradients_survive(tiny, monkeypatch):
    # Fails if ppo_update does not scale the loss with the scaler it is given (the float16 gradient is then
    # far off), or does not unscale it before the clip (off by 2^16).
    reference = first_layer_gradient(tiny, torch.float32, True, monkeypatch)
    scaled = first_layer_gradient(tiny, torch.float16, True, monkeypatch)
    unscaled = first_layer_gradient(tiny, torch.float16, False, monkeypatch)
    def error(gradient):
        return float((gradient - reference).norm() / reference.norm())
    assert error(scaled) < 0.03
    assert error(unscaled) > 0.1  # the reason for the scaler: float16 alone loses these gradients


def test_the_warm_start_of_a_float16_adapter_scales_its_loss_and_unscales_before_the_clip(tiny, monkeypatch, tmp_path):
    # A pretrained model's warm start trains its adapter (support/models.py, departure 2) on the float16 base:
    # the same scaler as the update. Fails if sft_backward ignores the scaler, or the clip sees the scaled
    # gradient (2^16 times the float32 one).
    problems, tok, model, _ = tiny
    cfg = stepcoder.Config(model="tiny", lora_r=4, sft_steps=1, sft_batch_size=4, rows_per_forward=2,
                           max_prompt_tokens=64, max_new_tokens=48)
    scaled, clipped = [], []
    real_scale, real_clip = torch.amp.GradScaler.scale, torch.nn.utils.clip_grad_norm_
    def scale(scaler, loss):
        scaled.append(scaler.is_enabled())
        return real_scale(scaler, loss)
    def record(parameters, max_norm):
        clipped.append(torch.cat([p.grad.flatten() for p in parameters]).clone())
        return real_clip(parameters, max_norm)
    monkeypatch.setattr(torch.amp.GradScaler, "scale", scale)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", record)
    for dtype in (torch.float32, torch.float16):
        torch.manual_seed(0)
        policy, _ = models.add_adapter(copy.deepcopy(model).to(dtype), cfg)
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
        models.warm_start(policy, tok, problems, cfg, random.Random(0), "cpu", tmp_path / f"sft_{dtype}.pt")
    assert scaled == [False, False, True, True]  # two row groups each: float32 unscaled, float16 scaled
    reference, half = clipped
    assert float((half - reference).norm() / reference.norm()) < 0.03
