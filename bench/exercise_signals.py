"""What each exercise of docs/ASSIGNMENTS.md moves in the running system: a short tiny run from one
warm-started base with the reference functions, then the same run with one typical wrong answer in place
of one exercise's function (the answer key's, tests/test_grading.py), exercise by exercise. It prints, for
each, the step metrics that moved most against the reference run of the same invocation.

    python3 bench/exercise_signals.py [--steps 2] [--base RUN/base] [--out runs/exercise-signals]

Without --base it first warm-starts the tiny model (`--model tiny`'s defaults, --sft-steps 300, about two
minutes on a 2-core CPU) and reuses that base (OUT/warm/base) on later invocations. Each run then takes
about 30 s per step on such a host. Not in the student handout: it reads the answer key.
"""
import argparse
import contextlib
import importlib
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import stepcoder  # noqa: E402
import test_grading  # noqa: E402  (the answer key: the wrong answers)

# (exercise, module, attribute, the wrong answer: a variant of tests/test_grading.py)
SIGNALS = [
    (1, "stepcoder", "compute_gae", "compute_gae", "bootstrap_from_values_t"),
    (2, "stepcoder", "policy_loss", "policy_loss", "min_instead_of_max"),
    (3, "stepcoder", "value_loss", "value_loss", "clip_around_returns"),
    (4, "stepcoder", "fgo_mask", "fgo_mask", "keep_unexecuted"),
    (5, "stepcoder", "kl_penalized_rewards", "kl_penalized_rewards", "sign_flipped"),
    (6, "curriculum", "stage_prefixes", "stage_prefixes", "K_floor"),
    (7, "curriculum", "Curriculum.update", "curriculum_update", "toward_harder"),
    (8, "sandbox", "outputs_match", "outputs_match", "sorted"),
    (9, "stepcoder", "logprobs_and_values", "logprobs_and_values", "logits_at_the_token"),
    (10, "stepcoder", "whiten", "whiten", "over_padding"),
    (11, "stepcoder", "response_length", "response_length", "eos_not_an_action"),
]
SHOWN = ["reward_mean", "pass_rate", "kl", "approx_kl", "clipfrac", "entropy", "pg_loss", "vf_loss", "explained_var",
         "fgo_kept", "stage0_share", "stage_hist"]


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


def run(base: Path, out: Path, steps: int) -> list[dict]:
    cfg = stepcoder.parse_config(["--model", str(base), "--steps", str(steps), "--no-eval", "--out", str(out),
                                  "--overwrite", "--seed", "0"])
    stepcoder.train(cfg)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def moved(reference: dict, other: dict) -> list[tuple[str, str]]:
    """The shown metrics that differ, largest relative change first: (name, 'reference -> other')."""
    rows = []
    for name in SHOWN:
        a, b = reference.get(name), other.get(name)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            change = abs(b - a) / max(abs(a), 1e-3)
            if change > 0.05:
                rows.append((change, name, f"{a:.3g} -> {b:.3g}"))
        elif a != b:
            rows.append((math.inf, name, f"{a} -> {b}"))
    return [(name, text) for _, name, text in sorted(rows, key=lambda row: -row[0])]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--base", type=Path, default=None, help="a warm-started tiny base (RUN/base)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "exercise-signals")
    args = parser.parse_args(argv)
    base = args.base
    if base is None:
        base = args.out / "warm" / "base"
        if not base.is_dir():
            stepcoder.train(stepcoder.parse_config(["--model", "tiny", "--steps", "0", "--no-eval",
                                                    "--out", str(args.out / "warm"), "--overwrite"]))
    if not (base / "config.json").is_file():
        print(f"exercise_signals: error: {base} is not a saved model (--base RUN/base)", file=sys.stderr)
        return 2
    results = {"reference": run(base, args.out / "reference", args.steps)}
    variants = test_grading.VARIANTS
    for number, module, attribute, grader, bug in SIGNALS:
        with replaced(module, attribute, variants[grader](bug)):
            results[f"{number} {attribute}: {bug}"] = run(base, args.out / f"exercise{number}", args.steps)
    (args.out / "signals.json").write_text(json.dumps(results, indent=1))
    reference = results["reference"][-1]
    print(f"\nstep {args.steps} of the tiny run from {base}: the reference's metrics, then what each wrong answer moves")
    print("  reference: " + ", ".join(f"{name} {reference[name]:.3g}" if isinstance(reference[name], float)
                                      else f"{name} {reference[name]}" for name in SHOWN))
    for name, metrics in results.items():
        if name != "reference":
            print(f"  {name}: " + "; ".join(f"{metric} {text}" for metric, text in moved(reference, metrics[-1])[:5]))
    print(f"all steps: {args.out / 'signals.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
