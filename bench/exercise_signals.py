"""What each exercise of docs/ASSIGNMENTS.md moves in the running system: a short tiny run from one
warm-started base with the reference functions, then the same run with one typical wrong answer in place
of one exercise's function (the answer key's, tests/test_grading.py), exercise by exercise. It prints, for
each, the metrics its "In the tiny run" line names, step by step, against the reference run of the
same invocation.

    python3 bench/exercise_signals.py [--steps 2] [--base RUN/base] [--out runs/exercise-signals]

Without --base it first warm-starts the tiny model (`--model tiny`'s defaults, --sft-steps 300, about two
minutes on a 2-core CPU) and reuses that base (OUT/warm/base) on later invocations. The 14 runs then take
about 7 minutes on such a host (`--exercises 12` runs one exercise and its reference). Exercise 12's function
runs only under GRPO: it and its reference run with `--algo grpo`. Not in the student handout: it reads the answer key.
"""
import argparse
import contextlib
import importlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import stepcoder  # noqa: E402
import test_grading  # noqa: E402  (the answer key: the wrong answers)

# (exercise, module, attribute, the wrong answer: a variant of tests/test_grading.py, the metrics its
# "In the tiny run" line in docs/ASSIGNMENTS.md names)
SIGNALS = [
    (1, "stepcoder", "compute_gae", "compute_gae", "bootstrap_from_values_t", ("explained_var", "vf_loss")),
    (2, "stepcoder", "policy_loss", "policy_loss", "min_instead_of_max", ("kl", "pg_loss")),
    (3, "stepcoder", "value_loss", "value_loss", "clip_around_returns", ("vf_loss", "explained_var")),
    (4, "stepcoder", "fgo_mask", "fgo_mask", "keep_unexecuted", ("fgo_kept",)),
    (5, "stepcoder", "kl_penalized_rewards", "kl_penalized_rewards", "sign_flipped", ("kl",)),
    (6, "curriculum", "stage_prefixes", "stage_prefixes", "K_floor", ("stage_hist", "pass_rate")),
    (7, "curriculum", "Curriculum.update", "curriculum_update", "toward_harder", ("stage_hist",)),
    (8, "sandbox", "outputs_match", "outputs_match", "zip_without_length", ("pass_rate", "reward_mean")),
    (9, "stepcoder", "logprobs_and_values", "logprobs_and_values", "logits_at_the_token", ("clipfrac", "kl")),
    (10, "stepcoder", "whiten", "whiten", "over_padding", ("pg_loss", "kl")),
    (11, "stepcoder", "response_length", "response_length", "eos_not_an_action", ("kl", "reward_mean")),
    (12, "stepcoder", "group_advantages", "group_advantages", "whole_batch", ("pg_loss", "kl_loss")),
]
ALGO = {12: "grpo"}  # exercises whose function only GRPO calls: they run, and are compared, with --algo grpo


def shown(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


@contextlib.contextmanager
def replaced(module: str, attribute: str, function):
    owner = importlib.import_module(module)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    setattr(owner, name, function)
    try:
        yield
    finally:
        setattr(owner, name, original)


def run(base: Path, out: Path, steps: int, algo: str = "ppo") -> list[dict]:
    cfg = stepcoder.parse_config(["--model", str(base), "--steps", str(steps), "--no-eval", "--out", str(out),
                                  "--overwrite", "--seed", "0", "--algo", algo])
    stepcoder.train(cfg)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--base", type=Path, default=None, help="a warm-started tiny base (RUN/base)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "exercise-signals")
    parser.add_argument("--exercises", type=int, nargs="+", default=[s[0] for s in SIGNALS], help="which (default: all)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        print("exercise_signals: error: --steps must be at least 1", file=sys.stderr)
        return 2
    base = args.base
    if base is None:
        base = args.out / "warm" / "base"
        if not base.is_dir():
            stepcoder.train(stepcoder.parse_config(["--model", "tiny", "--steps", "0", "--no-eval",
                                                    "--out", str(args.out / "warm"), "--overwrite"]))
    if not (base / "config.json").is_file():
        print(f"exercise_signals: error: {base} is not a saved model (--base RUN/base)", file=sys.stderr)
        return 2
    signals = [signal for signal in SIGNALS if signal[0] in args.exercises]
    results = {}
    for algo in sorted({ALGO.get(signal[0], "ppo") for signal in signals}):
        results[f"reference {algo}"] = run(base, args.out / f"reference-{algo}", args.steps, algo)
    for number, module, attribute, grader, bug, _ in signals:
        with replaced(module, attribute, test_grading.VARIANTS[grader](bug)):
            results[f"{number} {attribute}: {bug}"] = run(base, args.out / f"exercise{number}", args.steps,
                                                          ALGO.get(number, "ppo"))
    (args.out / "signals.json").write_text(json.dumps(results, indent=1))
    print(f"\nthe tiny run from {base}, steps 1..{args.steps}: each exercise's metrics, reference -> wrong answer")
    for number, _, attribute, _, bug, metrics in signals:
        reference = results[f"reference {ALGO.get(number, 'ppo')}"]
        rows = results[f"{number} {attribute}: {bug}"]
        print(f"  {number} {attribute} ({bug}): " + "; ".join(
            f"{metric} " + ", ".join(f"{shown(a[metric])} -> {shown(b[metric])}" for a, b in zip(reference, rows))
            for metric in metrics))
    print(f"every metric of every step: {args.out / 'signals.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
