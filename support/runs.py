"""A run's directory: checkpoints and resuming, metrics (JSON lines, TensorBoard, a PNG of the curves),
what a step prints, and the summary at the end. Plumbing of stepcoder.py, not the method.

    python3 -m support.runs runs/tiny        # the summary and curves.png of a run directory, again

A run directory holds config.json, metrics.jsonl (one row per PPO step), eval_step<N>.json, checkpoint/
(the LoRA adapter as peft saves it, value head, optimizer, curriculum and RNG state), for `tiny` the
warm-started base model in base/, curves.png (with matplotlib) and, with --tensorboard, event files.
"""
from __future__ import annotations

import json
import random
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from support.config import Config, UsageError


@dataclass
class Run:
    """A run directory, and what Ctrl-C's one line says: where the run is and its last checkpoint."""
    dir: Path
    progress: dict            # {"where": ..., "saved": ...}
    tensorboard: Any = None   # a SummaryWriter with --tensorboard (rank 0), else None


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


def save_checkpoint(run_dir: Path, policy, value_head, optimizer, cccs, step: int, rng: random.Random):
    """Written to a temporary folder, then renamed: a crash never leaves half a checkpoint."""
    tmp, final, old = run_dir / "checkpoint.tmp", run_dir / "checkpoint", run_dir / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp / "adapter")  # loadable with PeftModel.from_pretrained
    torch.save({"value_head": value_head.state_dict(), "optimizer": optimizer.state_dict(), "python_rng": rng.getstate(),
                "torch_rng": torch.get_rng_state(),  # and CUDA's: sampling on a GPU draws from it
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}, tmp / "state.pt")
    (tmp / "progress.json").write_text(json.dumps({"step": step, "curriculum": cccs.state_dict()}))
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def recover_checkpoint(run_dir: Path) -> None:
    """Before a resume reads the run's step, after a crash inside save_checkpoint: RUN/checkpoint becomes the
    checkpoint the save left complete (its progress.json, written last, reads with a "step"): itself, else the
    newer of checkpoint.tmp and checkpoint.old; the other folders are removed. Nothing complete (a new run): no change."""
    def step(folder: Path) -> int | None:
        try:
            return json.loads((folder / "progress.json").read_text())["step"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
    final, tmp, old = run_dir / "checkpoint", run_dir / "checkpoint.tmp", run_dir / "checkpoint.old"
    complete = [folder for folder in (final, tmp, old) if step(folder) is not None]
    if not complete:
        return
    if final not in complete:
        shutil.rmtree(final, ignore_errors=True)
        max(complete, key=step).rename(final)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(checkpoint: Path, value_head, optimizer, cccs, rng: random.Random) -> int:
    """Value head, optimizer, curriculum and every RNG as saved (the adapter is loaded with the model). -> step"""
    state = torch.load(checkpoint / "state.pt", weights_only=False)
    value_head.load_state_dict(state["value_head"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    rng.setstate(state["python_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    progress = json.loads((checkpoint / "progress.json").read_text())
    cccs.load_state_dict(progress["curriculum"])
    return progress["step"]


def keep_metrics_until(metrics: Path, step: int) -> None:
    """A resumed run appends to metrics.jsonl from its checkpoint's step on: rows written after that
    checkpoint (an interrupted run's last steps) are dropped first, so no step appears twice."""
    if metrics.exists():
        rows = [line for line in metrics.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        metrics.write_text("".join(row + "\n" for row in rows))


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


def show_rollouts(rollouts, results: list, b_fgo, count: int) -> None:
    """--show-rollouts: the first `count` scored rollouts of a step (stepcoder.Rollouts), FGO-masked tokens marked."""
    for i in range(min(count, len(results))):
        ends = rollouts.token_ends[i]
        pieces = [rollouts.texts[i][a:b] for a, b in zip([0] + ends[:-1], ends)]
        tqdm.write(show_rollout(rollouts.problems[i], rollouts.stages[i], rollouts.prefixes[i], pieces,
                                b_fgo[i].tolist(), results[i]))


def log_step(run_dir: Path, metrics: dict, tensorboard) -> None:
    """One row of metrics.jsonl (every metric is defined in docs/WALKTHROUGH.md), TensorBoard's scalars,
    and the step's one greppable line."""
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(metrics) + "\n")
    if tensorboard is not None:
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and name != "step":
                tensorboard.add_scalar(name, value, metrics["step"])
        tensorboard.flush()
    failed = metrics.get("frac_sandbox_error", 0)  # rollouts the sandbox failed on, left out: shown only if any
    tqdm.write(f"step {metrics['step']} | reward {metrics['reward_mean']:+.3f} | pass {metrics['pass_rate']:.3f} | "
               f"kl {metrics['kl']:.3f} | clipfrac {metrics['clipfrac']:.3f} | fgo_kept {metrics['fgo_kept']:.2f} | "
               f"stages {metrics['stage_hist']} | stage0 {metrics['stage0_share']:.2f} | {metrics['t_generate']:.0f}s gen {metrics['t_score']:.0f}s score "
               f"{metrics['t_update']:.0f}s update" + (f" | sandbox_error {failed:.3f}" if failed else ""))


def open_tensorboard(run_dir: Path, enabled: bool):
    """A SummaryWriter into the run directory with --tensorboard (`tensorboard --logdir runs`), else None."""
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(run_dir / "tensorboard"))


CURVES = {"reward_mean": "rollout reward (Eq. 3)", "pass_rate": "rollout pass rate", "kl": "KL to the reference (nats/seq)",
          "fgo_kept": "tokens FGO keeps", "stage_hist": "problems per CCCS stage",
          "stage0_share": "rollouts at plain generation (stage 0)"}


def plot_run(run_dir: Path) -> Path | None:
    """curves.png in the run directory: reward, pass rate, KL, FGO's kept share, CCCS stages. None
    without matplotlib (pip install matplotlib) or without metrics."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = read_metrics(run_dir)
    if not rows:
        return None
    steps = [row["step"] for row in rows]
    figure, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3.2))
    for ax, (name, title) in zip(axes, CURVES.items()):
        if name == "stage_hist":
            stages = sorted({int(s) for row in rows for s in row[name]})
            counts = [[row[name].get(str(s), 0) for row in rows] for s in stages]
            ax.stackplot(steps, counts, labels=[f"stage {s}" for s in stages])
            ax.legend(fontsize=7, loc="upper left")
        else:
            ax.plot(steps, [row.get(name) for row in rows])  # (runs older than a metric lack it)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("PPO step")
    figure.tight_layout()
    figure.savefig(run_dir / "curves.png", dpi=90)
    plt.close(figure)
    return run_dir / "curves.png"


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def summary(run_dir: Path, seconds: float | None = None) -> str:
    """What the run did: pass@1 before -> after RL per problem set and difficulty, each set's pass@1 and
    pass@k with their 95% intervals, its rollouts, the time it took, and where its files are."""
    rows = read_metrics(run_dir)
    evaluations = sorted(run_dir.glob("eval_step*.json"), key=lambda p: int(p.stem.removeprefix("eval_step")))
    lines = [f"run {run_dir}: {rows[-1]['step'] if rows else 0} PPO steps" + (f" in {seconds / 60:.1f} min" if seconds else "")]
    if len(evaluations) >= 2:
        first, last = (json.loads(p.read_text()) for p in (evaluations[0], evaluations[-1]))
        lines.append(f"pass@1 at stage 0, {evaluations[0].stem.removeprefix('eval_')} -> {evaluations[-1].stem.removeprefix('eval_')}:")
        for split, table in last.items():
            for difficulty, after in table.items():
                if difficulty == "problems":  # each problem's pass rates, for bench/ablations.py
                    continue
                before = first.get(split, {}).get(difficulty, {}).get("pass@1", float("nan"))
                lines.append(f"  {split:5s} {difficulty:12s} {before:.3f} -> {after['pass@1']:.3f} "
                             f"(greedy {first.get(split, {}).get(difficulty, {}).get('greedy', float('nan')):.3f} -> "
                             f"{after['greedy']:.3f}, n={after['n']})")
            spread = pass_at_k_line(split, first.get(split, {}).get("overall", {}), table.get("overall", {}))
            if spread:
                lines.append(spread)
    if rows:
        first = [row["reward_mean"] for row in rows[:5]]
        last = [row["reward_mean"] for row in rows[-5:]]
        lines.append(f"rollout reward, first 5 -> last 5 steps: {sum(first) / len(first):+.3f} -> "
                     f"{sum(last) / len(last):+.3f}; stages now {rows[-1]['stage_hist']}")
    reached = plain_generation(run_dir)
    if reached:
        lines.append(reached)
    if (run_dir / "curves.png").exists():
        lines.append(f"curves: {run_dir / 'curves.png'}")
    lines.append(f"files: {run_dir}/metrics.jsonl, {run_dir}/checkpoint/"
                 + ("; continue with --resume " + str(run_dir) + " --steps N" if rows else ""))
    return "\n".join(lines)


def pass_at_k_line(split: str, before: dict, after: dict) -> str | None:
    """A problem set's overall pass@1 and pass@k at its largest k (the samples per problem), before -> after,
    each with its 95% interval over problems (stepcoder.interval95: normal approximation); None for an
    evaluation written before reports had pass@k. "-": the earlier report lacks that k."""
    if "pass@k" not in after:
        return None
    def estimate(row: dict, k: str) -> str:
        if k not in row.get("pass@k", {}):
            return "-"
        interval = row.get("ci95", {}).get(f"pass@{k}")
        return f"{row['pass@k'][k]:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")
    largest = max(after["pass@k"], key=int)
    shown = ["1"] if largest == "1" else ["1", largest]
    return (f"  {split:5s} " + ", ".join(f"pass@{k} {estimate(before, k)} -> {estimate(after, k)}" for k in shown)
            + f" (95% intervals over {after['n']} problems, normal approximation)")


def plain_generation(run_dir: Path) -> str | None:
    """How the run's problems came to plain generation (stage 0), from its checkpoint's curriculum."""
    progress = run_dir / "checkpoint" / "progress.json"
    if not progress.exists():
        return None
    curriculum = json.loads(progress.read_text())["curriculum"]
    if not curriculum["enabled"]:
        return "CCCS off: every problem at plain generation throughout"
    how = [row[3] if len(row) > 3 else None for row in curriculum["problems"]]
    stages = [row[1] for row in curriculum["problems"]]
    from_start = sum(stage == 0 and reached is None for stage, reached in zip(stages, how))
    return (f"problems at plain generation (stage 0): {how.count('threshold')} moved there by the threshold, "
            f"{how.count('schedule')} by the schedule, {from_start} without completion stages; "
            f"{sum(stage > 0 for stage in stages)} of {len(stages)} still at completion stages")


def main(argv: list[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(description="The summary and curves of a StepCoder run directory.")
    parser.add_argument("run_dir", help="a run directory, e.g. runs/tiny")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not (run_dir / "config.json").exists():
        print(f"support.runs: error: {run_dir} is not a run directory (no config.json)", file=sys.stderr)
        return 2
    plot_run(run_dir)
    print(summary(run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
