"""The paper's ablations (Table 1), small: StepCoder, without CCCS, without FGO, vanilla PPO.

    python3 bench/ablations.py                       # 3 seeds x 4 settings, tiny model, CPU
    python3 bench/ablations.py --seeds 0 --steps 10  # a quick look

Same seeds and budget for every setting. Per seed, the warm start (SFT) runs once and its
base model is shared by the four settings (`--model RUN/base` loads it like any local model:
the reference policy is that SFT model, as with `--model tiny`). Each setting then runs
`--steps` PPO steps. Reported: pass@1 with full generation (stage 0, greedy) on the train
problems right after the warm start and after RL, mean and spread (min..max) over seeds,
and the reward / pass-rate curves as a PNG. Prints a markdown table for the README.
"""
import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import stepcoder  # noqa: E402

SETTINGS = {"StepCoder (CCCS + FGO)": [], "w/o CCCS": ["--no-cccs"], "w/o FGO": ["--no-fgo"],
            "vanilla PPO": ["--no-cccs", "--no-fgo"]}


def tiny_flags(steps: int) -> list[str]:
    flags = []
    for k, v in {**stepcoder.TINY_DEFAULTS, "steps": steps}.items():
        if k not in ("sft_steps", "sft_lr"):
            flags += ["--" + k.replace("_", "-")] + ([] if v is True else [str(v)])
    return flags


def plot(results: dict, seeds: list, png: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG (pip install -r requirements-dev.txt)")
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key in zip(axes, ("reward", "pass_rate", "stage0")):
        for name, runs in results.items():
            curves = [r[key] for r in runs]
            mean = [statistics.mean(c[i] for c in curves) for i in range(len(curves[0]))]
            smooth = [statistics.mean(mean[max(0, i - 4):i + 1]) for i in range(len(mean))]
            ax.plot(range(1, len(mean) + 1), smooth, label=name)
        ax.set(xlabel="PPO step", ylabel={"stage0": "share of problems at stage 0 (CCCS)"}.get(key, f"rollout {key}"))
    axes[0].legend()
    fig.suptitle(f"tiny model, bundled train problems: mean over seeds {seeds}, 5-step moving average\n"
                 "(with CCCS the rollouts carry canonical prefixes: its curves are not comparable with the others')")
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    print(f"curves: {png}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=stepcoder.TINY_DEFAULTS["steps"])
    ap.add_argument("--out", default="runs/ablations")
    ap.add_argument("--png", default="docs/ablations.png")
    ap.add_argument("--replot", action="store_true", help="only redraw the PNG from OUT/results.json")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads((Path(args.out) / "results.json").read_text()), args.seeds, args.png)
        return 0
    out, data = Path(args.out), str(ROOT / "data" / "train.json")
    shutil.rmtree(out, ignore_errors=True)
    results = {name: [] for name in SETTINGS}
    for seed in args.seeds:
        sft = out / f"sft-seed{seed}"
        stepcoder.train(stepcoder.parse_config(["--model", "tiny", "--steps", "0", "--seed", str(seed), "--eval",
                                                "--test-data", data, "--data", data, "--out", str(sft)]))
        before = json.loads((sft / "eval_step0.json").read_text())["train"]["overall"]["pass@1"]
        for name, flags in SETTINGS.items():
            run = out / f"{name.split()[0].lower()}{'-'.join(flags)}-seed{seed}"
            stepcoder.train(stepcoder.parse_config(["--model", str(sft / "base"), *tiny_flags(args.steps), "--seed", str(seed),
                                                    "--eval", "--test-data", data, "--data", data, "--out", str(run), *flags]))
            after = json.loads((run / f"eval_step{args.steps}.json").read_text())["train"]["overall"]["pass@1"]
            curve = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            results[name].append({"seed": seed, "before": before, "after": after,
                                  "reward": [r["reward_mean"] for r in curve], "pass_rate": [r["pass_rate"] for r in curve],
                                  "stage0": [r["stage_hist"].get("0", 0) / sum(r["stage_hist"].values()) for r in curve]})
    (out / "results.json").write_text(json.dumps(results, indent=1))

    def cell(xs):
        return f"{statistics.mean(xs):.3f} ({min(xs):.3f}..{max(xs):.3f})"
    print(f"\n| setting | pass@1 after warm start | pass@1 after {args.steps} PPO steps | change | reward, first 5 -> last 5 steps |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        first = [statistics.mean(r["reward"][:5]) for r in runs]
        last = [statistics.mean(r["reward"][-5:]) for r in runs]
        print(f"| {name} | {cell([r['before'] for r in runs])} | {cell([r['after'] for r in runs])} | "
              f"{cell([r['after'] - r['before'] for r in runs])} | {statistics.mean(first):+.3f} -> {statistics.mean(last):+.3f} |")
    plot(results, args.seeds, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
