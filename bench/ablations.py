"""The paper's ablations (Table 1), small: StepCoder, without CCCS, without FGO, vanilla PPO.

    python3 bench/ablations.py                       # 5 seeds x 4 settings, tiny model, CPU (README, Results)
    python3 bench/ablations.py --seeds 0 --steps 10  # a quick look
    python3 bench/ablations.py --settings stepcoder --eval-every 10 --out runs/curve  # pass@1 every 10 steps
    python3 bench/ablations.py --eval-every 10 --continue   # after an interruption: only the unfinished runs
    python3 bench/ablations.py --data data/family/train.json --test-data data/family/test.json --out runs/ablations-family
    python3 bench/ablations.py --data data/family480/train.json --test-data data/family480/test.json --test-sampled \
        --steps 120 --seeds 0 1 2 --eval-every 60 --out runs/family480-long   # held-out pass@1 and pass@8 sampled too
    python3 bench/ablations.py --sft-data data/family480/sft.json --data data/family480/rl.json \
        --test-data data/family480/test.json --test-sampled --steps 60 --seeds 0 1 2 --out runs/cccs-demo  # the curriculum demo
    python3 bench/ablations.py ... --settings stepcoder no-cccs-no-fgo grpo grpo-no-cccs-no-fgo   # PPO against GRPO

Same seeds and budget for every setting. The warm start (SFT, `--sft-seed`) runs once and its
base model is shared by all runs (`--model RUN/base` loads it like any local model: the
reference policy is that SFT model, as with `--model tiny`), as the paper's runs start from one
SFT model. Each setting and seed then runs `--steps` PPO steps (the GRPO settings, `--algo grpo`, as many
GRPO steps of as many rollouts: 8 problems x 4 samples). Reported: pass@1 with full
generation (stage 0) on the train problems right after the warm start and after RL (8 samples
per problem at the rollout temperature, and greedy), pass@8 (the share of problems any of the 8
samples solves) and the samples' mean reward; greedy pass@1 on the held-out problems (--test-data;
with --test-sampled also from 8 samples each, and pass@8); pass@1 after RL on the train problems
the warm start never solved (no sample, not greedy: where exploration is hard, CCCS's case); each a mean
and spread (min..max) over seeds, with each run's minutes; the rollout reward / pass-rate curves,
and pass@1 and reward at the evaluated steps, as a PNG. Prints a markdown table for the README and each setting's difference
from the first, seed by seed (a seed draws the same problems in every setting); records the host
(CPU, torch's kernel level, versions: they change the float rounding, hence the runs) in
OUT/hosts.jsonl. Another `--sft-seed` repeats it all from another warm-started model.
"""
import argparse
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from support import config  # noqa: E402
import stepcoder  # noqa: E402

# GRPO's groups: 4 samples of each of 8 problems, the PPO rows' 32 rollouts per step (16 x 2) in groups a baseline
# can be taken over (a group of 2 has one other sample); each problem is visited half as often as under PPO.
GRPO = ["--algo", "grpo", "--problems-per-step", "8", "--samples-per-problem", "4"]
SETTINGS = {"StepCoder (CCCS + FGO)": [], "w/o CCCS": ["--no-cccs"], "w/o FGO": ["--no-fgo"],
            "vanilla PPO": ["--no-cccs", "--no-fgo"], "GRPO + CCCS + FGO": GRPO, "GRPO w/o CCCS": GRPO + ["--no-cccs"],
            "GRPO w/o FGO": GRPO + ["--no-fgo"], "GRPO": GRPO + ["--no-cccs", "--no-fgo"]}
SLUGS = {"-".join(["grpo"] * (flags[:1] == ["--algo"]) + [f.strip("-") for f in flags if f.startswith("--no-")])
         or "stepcoder": name for name, flags in SETTINGS.items()}


def tiny_flags(steps: int) -> list[str]:
    flags = []
    for k, v in {**config.TINY_DEFAULTS, "steps": steps}.items():
        if k not in ("sft_steps", "sft_lr", "eval"):
            flag = k.replace("_", "-")
            flags += [f"--{flag}"] if v is True else [f"--no-{flag}"] if v is False else [f"--{flag}", str(v)]
    return flags


def plot(results: dict, seeds: list, png: str, data: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG (pip install -r requirements.txt)")
        return
    fig, axes = plt.subplots(2, 3, figsize=(18, 8))
    axes = axes.flat
    labels = {"reward": "rollout reward (all stages)", "reward_stage0": "rollout reward, stage-0 rollouts only",
              "pass_rate": "rollout pass rate (all stages)", "stage0": "share of problems at stage 0 (CCCS)"}
    for ax, (key, label) in zip(axes, labels.items()):
        for name, runs in results.items():
            curves = [r[key] for r in runs]
            mean = [statistics.mean([c[i] for c in curves if c[i] is not None] or [math.nan]) for i in range(len(curves[0]))]
            smooth = [statistics.mean(mean[max(0, i - 4):i + 1]) for i in range(len(mean))]
            ax.plot(range(1, len(mean) + 1), smooth, label=name)
        ax.set(xlabel="PPO step", title=label)
    for ax, key, label in ((axes[4], "pass_at_1", "pass@1"), (axes[5], "eval_reward", "mean reward")):
        for name, runs in results.items():  # at the evaluated steps (stage 0, train problems): mean, bars min..max
            ys = list(zip(*[[y for _, y in r[key]] for r in runs]))
            mean = [statistics.mean(y) for y in ys]
            ax.errorbar([t for t, _ in runs[0][key]], mean, marker="o", capsize=3, label=name,
                        yerr=[[m - min(y) for m, y in zip(mean, ys)], [max(y) - m for m, y in zip(mean, ys)]])
        ax.set(xlabel="PPO step", title=f"evaluation: {label}, stage 0 (bars: seeds' min..max)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=len(results))
    fig.suptitle(f"tiny model, train problems of {data}: mean over seeds {seeds}, 5-step moving average\n"
                 "(with CCCS the rollouts carry canonical prefixes: its curves are not comparable with the others')")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    print(f"curves: {png}")


def table(results: dict) -> None:
    """The README's markdown table: mean (min..max) over seeds."""
    steps = len(next(iter(results.values()))[0]["reward"])
    def cell(xs, f=".3f"):
        return f"{xs[0]:{f}}" if min(xs) == max(xs) else f"{statistics.mean(xs):{f}} ({min(xs):{f}}..{max(xs):{f}})"
    def first_last(runs, key):  # mean over seeds of the first 5 and the last 5 steps' values
        ends = [[x for x in r[key] if x is not None] or [math.nan] for r in runs]
        return f"{statistics.mean(statistics.mean(e[:5]) for e in ends):+.3f} -> {statistics.mean(statistics.mean(e[-5:]) for e in ends):+.3f}"
    def before_after(runs, before, after):
        return f"{cell([r[before] for r in runs])} -> {cell([r[after] for r in runs])}, " \
               f"{cell([r[after] - r[before] for r in runs], '+.3f')}"
    sampled = all("test_after" in r for runs in results.values() for r in runs)  # --test-sampled
    pass8 = all("pass8_after" in r for runs in results.values() for r in runs)  # older results.json rows lack it
    test8 = all("test_pass8_after" in r for runs in results.values() for r in runs)  # and --test-sampled
    print(f"\n| setting | pass@1 after warm start | pass@1 after {steps} PPO steps | change | greedy: before -> after, "
          "change | " + "pass@8: before -> after, change | " * pass8 + "held-out, greedy: before -> after, change | " +
          "held-out pass@1: before -> after, change | " * sampled + "held-out pass@8: before -> after, change | " * test8 +
          "never solved by the warm start: pass@1 after | "
          "evaluation reward: before -> after | rollout reward, first 5 -> last 5 steps | stage-0 rollouts' reward | minutes |")
    print("|---" * (11 + pass8 + sampled + test8) + "|")
    for name, runs in results.items():
        unsolved = f"{cell([r['unsolved_after'] for r in runs])} (n={runs[0]['unsolved_n']})" if runs[0].get("unsolved_n") else "-"
        held_out = before_after(runs, "test_greedy_before", "test_greedy_after") if "test_greedy_after" in runs[0] else "-"
        minutes = cell([r["minutes"] for r in runs], ".1f") if "minutes" in runs[0] else "-"
        print(f"| {name} | {cell([r['before'] for r in runs])} | {cell([r['after'] for r in runs])} | "
              f"{cell([r['after'] - r['before'] for r in runs], '+.3f')} | {before_after(runs, 'greedy_before', 'greedy_after')} | "
              + f"{before_after(runs, 'pass8_before', 'pass8_after')} | " * pass8 + f"{held_out} | "
              + f"{before_after(runs, 'test_before', 'test_after')} | " * sampled
              + f"{before_after(runs, 'test_pass8_before', 'test_pass8_after')} | " * test8 + f"{unsolved} | "
              f"{cell([r['eval_reward'][0][1] for r in runs], '+.3f')} -> {cell([r['eval_reward'][-1][1] for r in runs], '+.3f')} | "
              f"{first_last(runs, 'reward')} | {first_last(runs, 'reward_stage0')} | {minutes} |")
    # A seed draws the same problems in every setting: compare the settings seed by seed too.
    (first, base), *others = results.items()
    for name, runs in others:
        for key, label in (("after", "pass@1 after RL"), ("pass8_after", "pass@8 after RL"),
                           ("test_greedy_after", "held-out greedy pass@1 after RL"),
                           ("test_after", "held-out pass@1 (sampled) after RL"), ("test_pass8_after", "held-out pass@8 after RL"),
                           ("unsolved_after", "pass@1 after RL on the never-solved")):
            diffs = [a[key] - b[key] for a, b in zip(base, runs) if a["seed"] == b["seed"] and key in a and key in b
                     and not math.isnan(a[key] - b[key])]
            if diffs:
                print(f"{first} minus {name}, {label}, same seeds: {statistics.mean(diffs):+.3f} "
                      f"({min(diffs):+.3f}..{max(diffs):+.3f}, {len(diffs)} seeds)")


def is_sampled(report: dict) -> bool:
    """Whether an evaluation report's pass@1 comes from samples (its problems have a sampled pass rate)."""
    return any("pass@1" in rates for rates in report["problems"].values())


def pass_at_8(report: dict) -> float:
    """pass@8 of a sampled report (8 samples per problem, as this bench evaluates): the share of its problems
    that at least one sample solves. RL can raise pass@1 by concentrating on what it already solves while
    pass@8 falls: fewer problems reached at all."""
    return statistics.mean(rates["pass@1"] > 0 for rates in report["problems"].values())


def host() -> dict:
    """What decides the runs' float rounding: the CPU, torch's kernel level, the library versions."""
    import platform, peft, torch, transformers
    info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "python": platform.python_version()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--steps", type=int, default=config.TINY_DEFAULTS["steps"])
    ap.add_argument("--sft-seed", type=int, default=0, help="seed of the one warm start")
    ap.add_argument("--settings", nargs="+", choices=list(SLUGS), default=list(SLUGS), help="which settings to run")
    ap.add_argument("--eval-every", type=int, default=0, help="also evaluate every N steps (a pass@1 curve; 0: at the end only)")
    ap.add_argument("--data", default=str(ROOT / "data" / "train.json"), help="training problems (the family: data/family/train.json)")
    ap.add_argument("--sft-data", default="", help="the warm start's problems, if not --data's (the curriculum demo: data/family480/sft.json)")
    ap.add_argument("--test-data", default=str(ROOT / "data" / "test.json"), help="held-out problems, evaluated greedily (and sampled: --test-sampled)")
    ap.add_argument("--test-sampled", action="store_true",
                    help="also sample the held-out problems, 8 each (--eval-test-sampled): a finer held-out pass@1 than greedy's, and pass@8")
    ap.add_argument("--out", default="runs/ablations")
    ap.add_argument("--png", default="docs/ablations.png")
    ap.add_argument("--replot", action="store_true", help="only reprint the table and redraw the PNG from OUT/results.json")
    ap.add_argument("--continue", dest="cont", action="store_true",
                    help="keep OUT's finished warm start and runs (an interrupted bench, same flags): redo only the unfinished ones")
    ap.add_argument("--overwrite", action="store_true", help="delete OUT's earlier runs and start again")
    args = ap.parse_args()
    if args.replot:
        results = json.loads((Path(args.out) / "results.json").read_text())
        table(results), plot(results, [r["seed"] for r in next(iter(results.values()))], args.png, args.data)
        return 0
    out, data, test_data = Path(args.out), args.data, args.test_data
    if out.is_dir() and any(out.iterdir()) and not (args.cont or args.overwrite):
        print(f"ablations: error: {out} holds earlier runs: pass --continue to keep them (only unfinished runs are redone), "
              f"--overwrite to delete them, or another --out", file=sys.stderr)
        return 2
    if args.overwrite:
        shutil.rmtree(out, ignore_errors=True)
    results = {SLUGS[slug]: [] for slug in args.settings}
    out.mkdir(parents=True, exist_ok=True)  # float rounding differs between hosts, and so do the runs (README)
    with open(out / "hosts.jsonl", "a") as f:  # one line per invocation (--continue may change hosts)
        f.write(json.dumps(host()) + "\n")
    sft, sampled = out / "sft", ["--eval-test-sampled"] * args.test_sampled
    if not (sft / "eval_step0.json").exists():
        shutil.rmtree(sft, ignore_errors=True)
        sft_data = ["--sft-data", args.sft_data] if args.sft_data else []
        stepcoder.train(stepcoder.parse_config(["--model", "tiny", "--steps", "0", "--sft-seed", str(args.sft_seed), "--eval",
                                                *sampled, *sft_data, "--test-data", test_data, "--data", data, "--out", str(sft)]))
    warm = json.loads((sft / "eval_step0.json").read_text())
    if args.test_sampled and not is_sampled(warm["test"]):
        print(f"ablations: error: {sft} was evaluated without --test-sampled: use another --out", file=sys.stderr)
        return 2
    before = warm["train"]["overall"]
    # the train problems the warm start never solves at stage 0 (no sample passes, nor greedy decoding)
    unsolved = [pid for pid, rates in warm["train"].get("problems", {}).items() if max(rates.values()) == 0]
    for seed in args.seeds:
        for slug in args.settings:
            name, run = SLUGS[slug], out / f"{slug}-seed{seed}"
            stops = [*range(args.eval_every or args.steps, args.steps, args.eval_every or args.steps), args.steps]
            if not (run / f"eval_step{args.steps}.json").exists():  # else finished (kept by --continue)
                shutil.rmtree(run, ignore_errors=True)
                started = time.time()
                stepcoder.train(stepcoder.parse_config(["--model", str(sft / "base"), *tiny_flags(stops[0]), "--seed", str(seed),
                                                        "--no-eval", "--test-data", test_data, "--data", data, "--out", str(run),
                                                        *SETTINGS[name]]))
                # evaluated after RL only (before RL it is the warm start, evaluated above): resumes, the
                # first with no steps left, each evaluating at its end. Evaluation has its own RNG and a
                # resumed run continues exactly, so this equals one run evaluating at each stop.
                for stop in stops:
                    stepcoder.train(stepcoder.parse_config(["--resume", str(run), "--steps", str(stop), "--eval", *sampled]))
                (run / "minutes.json").write_text(json.dumps({"minutes": (time.time() - started) / 60, "host": host()}))
            reports = [json.loads((run / f"eval_step{stop}.json").read_text()) for stop in stops]
            evals = [report["train"]["overall"] for report in reports]
            after, last = evals[-1], reports[-1]
            curve = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            results[name].append({"seed": seed, "before": before["pass@1"], "after": after["pass@1"],
                                  "pass_at_1": [[0, before["pass@1"]]] + [[t, e["pass@1"]] for t, e in zip(stops, evals)],
                                  "eval_reward": [[0, before["reward"]]] + [[t, e["reward"]] for t, e in zip(stops, evals)],
                                  "greedy_before": before["greedy"], "greedy_after": after["greedy"],
                                  "pass8_before": pass_at_8(warm["train"]), "pass8_after": pass_at_8(last["train"]),
                                  "test_greedy_before": warm["test"]["overall"]["greedy"],
                                  "test_greedy_after": last["test"]["overall"]["greedy"],
                                  "unsolved_n": len(unsolved), "unsolved_after": statistics.mean(
                                      [last["train"]["problems"][pid]["pass@1"] for pid in unsolved] or [math.nan]),
                                  "reward": [r["reward_mean"] for r in curve], "pass_rate": [r["pass_rate"] for r in curve],
                                  "reward_stage0": [r["reward_stage0"] for r in curve],
                                  "stage0": [r["stage_hist"].get("0", 0) / sum(r["stage_hist"].values()) for r in curve]})
            if is_sampled(warm["test"]) and is_sampled(last["test"]):  # held-out pass@1 from samples too
                results[name][-1].update(test_before=warm["test"]["overall"]["pass@1"], test_after=last["test"]["overall"]["pass@1"],
                                         test_pass8_before=pass_at_8(warm["test"]), test_pass8_after=pass_at_8(last["test"]))
            if (run / "minutes.json").exists():
                results[name][-1]["minutes"] = json.loads((run / "minutes.json").read_text())["minutes"]
    (out / "results.json").write_text(json.dumps(results, indent=1))

    table(results), plot(results, args.seeds, args.png, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
