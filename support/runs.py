"""A run's directory: checkpoints and resuming, metrics (JSON lines, TensorBoard, a PNG of the curves),
what a step prints, the summary at the end, and Ctrl-C and SIGTERM. Plumbing of stepcoder.py, not the method.

    python3 -m support.runs runs/tiny        # the summary and curves.png of a run directory, again

A run directory holds config.json, metrics.jsonl (one row per PPO step), eval_step<N>.json, checkpoint/
(the LoRA adapter as peft saves it, value head, optimizer, curriculum and RNG state), for `tiny` the
warm-started base model in base/, curves.png (with matplotlib), rollouts.jsonl and rollouts.html (the rollouts
page: support/page.py) and, with --tensorboard, event files.

Whatever stops a run, its directory holds whole files: each is written under a temporary name and then
renamed (`write_atomically`; checkpoint/ and base/ as folders), so a crash leaves a file complete or absent,
and `--resume` continues from the newest complete state. The one file appended to, metrics.jsonl, may end in
a line cut off by a kill: it is dropped, in one line (`read_metrics`). Ctrl-C or SIGTERM during a PPO step
lets the step finish, saves it and stops; a second one stops at once, losing that step (`catch_stop_signals`).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import sandbox
from support import distributed
from support.config import Config, Interrupted, UsageError
from support.problems import DataError


@dataclass
class Run:
    """A run directory, what Ctrl-C's one line says (where the run is, its last checkpoint), and the signals."""
    dir: Path
    progress: dict            # {"where": ..., "saved": ..., "step": the PPO step in progress}
    tensorboard: Any = None   # a SummaryWriter with --tensorboard (rank 0), else None
    stop: int = 0             # the signal (SIGINT, SIGTERM) that asked the run to stop; 0: none
    stepping: bool = False    # inside the PPO loop: a first signal waits for the step's end
    saving: bool = False      # a checkpoint is being written: no signal interrupts it


def write_atomically(path: Path, text: str) -> None:
    """`path` holds `text` whole, or what it held before: written to PATH.tmp, then renamed over `path`."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def read_json(path: Path) -> Any:
    """A JSON file's contents; None if it is missing or not whole (left by a run before writes were atomic)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def check_run_dir(cfg: Config) -> int:
    """Before anything loads: a new run never reuses a directory by accident, a resumed one has something
    left to do. -> the step of the run's checkpoint (0: none)"""
    run_dir = Path(cfg.out)
    if not cfg.resume:  # (a crash's temporary files alone do not make a run)
        if run_dir.exists() and any(p.suffix != ".tmp" for p in run_dir.iterdir()) and not cfg.overwrite:
            raise UsageError(f"run directory {run_dir} exists: pass --resume {run_dir} to continue it, "
                             f"--overwrite to start again, or --out NEW_DIR")
        return 0
    progress = run_dir / "checkpoint" / "progress.json"
    step = json.loads(progress.read_text())["step"] if progress.exists() else 0
    evaluated = not cfg.eval or read_json(run_dir / f"eval_step{cfg.steps}.json") is not None
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
    write_atomically(run_dir / "config.json", json.dumps(asdict(cfg), indent=1))
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
    checkpoint (an interrupted run's last steps, a line cut off by a kill) are dropped first, so no step
    appears twice."""
    if metrics.exists():
        kept = [line for line, row in metrics_lines(metrics) if row["step"] <= step]
        write_atomically(metrics, "".join(line + "\n" for line in kept))


def catch_stop_signals(run: Run) -> dict | None:
    """Ctrl-C (SIGINT) and SIGTERM (what a cluster scheduler sends before it preempts a job), on every rank.
    In the PPO loop (run.stepping) the first signal lets the step in progress finish: `end_step` saves it and
    the run stops (Interrupted, exit 128 + the signal: 130, 143); a second one stops at once (KeyboardInterrupt),
    losing that step, the previous checkpoint intact. While a checkpoint is written (run.saving) a signal waits
    for the save's end. Elsewhere (loading, the warm start, an evaluation) a signal stops at once, its work
    given up (the warm start and the evaluations keep what their own files hold). -> the handlers replaced,
    for `restore_signals` (None outside the main thread, where Python cannot catch signals)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    def on_signal(signum, frame):
        first = not run.stop
        run.stop = run.stop or signum
        if run.saving or (run.stepping and first):
            if first and distributed.is_main():  # os.write: safe whatever the interrupted code was printing
                step = run.progress.get("step")
                again = "press Ctrl-C again" if signum == signal.SIGINT else "a second signal stops the run"
                line = (f"stopping once the checkpoint of step {step} is written" if run.saving else
                        f"stopping after step {step}, saved then; {again} to stop now, losing step {step}")
                os.write(2, f"\nstepcoder: {signal_name(signum)}: {line}\n".encode())
            return
        raise KeyboardInterrupt
    return {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}


def signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def restore_signals(handlers: dict | None) -> None:
    for signum, handler in (handlers or {}).items():
        signal.signal(signum, handler)


def open_run(cfg: Config) -> tuple[Run, int, bool, dict | None]:
    """stepcoder.py's run directory (--out): checked, a crash's checkpoint recovered, Ctrl-C and SIGTERM caught from
    here on. -> (run, the step it starts from, whether it resumes from a checkpoint, handlers for restore_signals)"""
    if cfg.resume and distributed.is_main():
        recover_checkpoint(Path(cfg.out))  # a crash while saving: the newest complete checkpoint
    distributed.barrier()
    start = check_run_dir(cfg)
    run = Run(Path(cfg.out), progress={"where": "while loading the model", "saved": "none"})
    handlers = catch_stop_signals(run)
    resuming = bool(cfg.resume) and (run.dir / "checkpoint").exists()
    distributed.barrier()  # every rank has read the run directory before rank 0 writes into it
    if start and distributed.is_main():
        tqdm.write(f"resuming {run.dir} from its checkpoint at step {start} (to step {cfg.steps})")
    return run, start, resuming, handlers


def end_step(run: Run, step: int, due: bool, save) -> bool:
    """The end of a PPO step, on every rank: whether a signal asked the run to stop, the same answer on every
    rank (any rank's signal stops them all, at this step); rank 0 calls `save` (the step's checkpoint) if it is
    `due` or the run stops, no signal interrupting it; a signal during that save stops the run after it.
    -> stop now (every rank has waited for the save)"""
    stop = not distributed.agree(not run.stop)
    if distributed.is_main() and (due or stop):
        run.saving = True
        try:
            save()
        finally:
            run.saving = False
        run.progress["saved"] = f"step {step}"
    if due and not stop:
        stop = not distributed.agree(not run.stop)
    if stop:
        run.stop = run.stop or signal.SIGTERM  # a rank the signal did not reach stops as one that it did
        distributed.barrier()
    return stop


def interrupted(run: Run) -> Interrupted:
    """The run stopped at once (KeyboardInterrupt: Ctrl-C, or a second signal): where, its last checkpoint, the
    command that continues it."""
    return Interrupted(f"interrupted {run.progress['where']} (last checkpoint: {run.progress['saved']}); "
                       f"continue with: python3 stepcoder.py --resume {run.dir}", exit_code=128 + (run.stop or signal.SIGINT))


def stopped(run: Run) -> Interrupted:
    """The run stopped by a signal after a step, saved: where, and the command that continues it."""
    return Interrupted(f"stopped by {signal_name(run.stop)} after step {run.progress.get('step')} (last "
                       f"checkpoint: {run.progress['saved']}); continue with: python3 stepcoder.py --resume {run.dir}",
                       exit_code=128 + run.stop)


def exit_code(error: BaseException) -> int:
    """What `python stepcoder.py` prints on stderr for an error that ends it, and its exit status. A
    NotImplementedError other than a handout's exercise is raised again."""
    if isinstance(error, (UsageError, DataError)):
        if distributed.is_main():  # several ranks: each has the same error, rank 0 says it
            print(f"stepcoder: error: {error}", file=sys.stderr)
        return 2
    if isinstance(error, Interrupted):
        if distributed.is_main():
            print(f"stepcoder: {error}", file=sys.stderr)
        return error.exit_code
    if isinstance(error, NotImplementedError):  # a student handout's exercise not written yet (docs/ASSIGNMENTS.md)
        if not str(error).startswith("exercise "):
            raise error
        print(f"stepcoder: {error}", file=sys.stderr)
        return 2
    if isinstance(error, KeyboardInterrupt):  # before the run directory was chosen: nothing to continue
        print("stepcoder: interrupted", file=sys.stderr)
        return 130
    print("stepcoder: CUDA out of memory: try --sampler policy (no 16-bit copy for decoding), a smaller "
          "--gen-batch-size or --minibatch-size, or fewer --max-new-tokens", file=sys.stderr)
    return 1


MASKED_ON, MASKED_OFF = "\x1b[2;9m", "\x1b[0m"  # a terminal's dim, struck-through text: FGO's masked tokens


def show_rollout(problem, stage: int, prefix: str, pieces: list[str], mask: list[float], result,
                 colour: bool = False) -> str:
    """A rollout as a student should see it: the canonical prefix (prompt, no gradient), then the
    generated tokens, with the ones FGO masks out of the policy loss inside ⟦ ⟧, or dim and struck
    through with `colour` (ANSI, for a terminal)."""
    def masked(piece: str) -> str:
        if not colour:
            return f"⟦{piece}⟧"
        return "\n".join(f"{MASKED_ON}{part}{MASKED_OFF}" if part else "" for part in piece.split("\n"))
    marked = "".join(p if keep else masked(p) for p, keep in zip(pieces, mask))
    lines = (prefix + marked).splitlines() or [""]
    n_prefix = len(prefix.splitlines())
    body = "\n".join(f"{i:4d} {'|' if i <= n_prefix else '+'} {line}" for i, line in enumerate(lines, 1))
    how = f"{MASKED_ON}masked by FGO{MASKED_OFF}" if colour else "⟦masked by FGO⟧"
    return (f"--- problem {problem.problem_id} | stage {stage} | {result.status} | reward {result.reward:+.1f} | "
            f"executed lines {sorted(result.executed_lines)}\n"
            f"(lines marked | are the canonical prefix of the stage, + are generated; {how})\n{body}")


def show_rollouts(rollouts, results: list, b_fgo, count: int) -> None:
    """--show-rollouts: the first `count` scored rollouts of a step (stepcoder.Rollouts), FGO-masked tokens marked:
    in colour on a terminal, inside ⟦ ⟧ otherwise (a file, a pipe)."""
    colour = sys.stdout.isatty()
    for i in range(min(count, len(results))):
        ends = rollouts.token_ends[i]
        pieces = [rollouts.texts[i][a:b] for a, b in zip([0] + ends[:-1], ends)]
        tqdm.write(show_rollout(rollouts.problems[i], rollouts.stages[i], rollouts.prefixes[i], pieces,
                                b_fgo[i].tolist(), results[i], colour))


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


def step_metrics(step: int, rollouts, scored: list, b: dict, stats: dict, cccs, seconds: dict) -> dict:
    """Step 8 of stepcoder.ppo_loop: one row of metrics.jsonl (each defined in docs/WALKTHROUGH.md, section 9), from
    the step's stepcoder.Rollouts, every rank's scored verdicts, the b_ tensors, the update's statistics, the
    curriculum and the phases' seconds. The figures cover every
    rank's rollouts (their tensors gathered in rank order), the update's statistics are the ranks' mean,
    the times the slowest rank's."""
    every = distributed.gather_rows({name: b[name] for name in ("scores", "kl", "entropy", "mask", "fgo",
                                                                 "returns", "values")}, b["mask"].device)
    ranks = distributed.gather({**stats, **seconds, "prompts_shortened": rollouts.prompts_shortened})
    mean_over_ranks = {name: sum(r[name] for r in ranks) / len(ranks) for name in stats}
    slowest = {name: max(r[name] for r in ranks) for name in seconds}
    verdicts = [status for _, status, _, _ in scored]
    judged = [(reward, stage) for _, status, reward, stage in scored if status != sandbox.SANDBOX_ERROR]
    stage0_rewards = [reward for reward, stage in judged if stage == 0]
    mask = every["mask"].bool()
    returns_var = torch.var(every["returns"][mask])
    explained_var = 0.0
    if returns_var > 0:
        explained_var = (1 - torch.var((every["returns"] - every["values"])[mask]) / returns_var).item()
    return {
        "step": step, "reward_mean": every["scores"][every["mask"].any(1)].mean().item() if judged else 0.0,
        "pass_rate": verdicts.count("pass") / len(scored),
        "reward_stage0": sum(stage0_rewards) / len(stage0_rewards) if stage0_rewards else None,
        **{f"frac_{v}": verdicts.count(v) / len(scored) for v in (*sandbox.REWARDS, sandbox.SANDBOX_ERROR)},
        "kl": every["kl"].sum(1).mean().item(), "approx_kl": mean_over_ranks["approx_kl"],
        "clipfrac": mean_over_ranks["clipfrac"],
        "entropy": ((every["entropy"] * every["mask"]).sum() / every["mask"].sum().clamp(min=1)).item(),
        "pg_loss": mean_over_ranks["pg_loss"], "vf_loss": mean_over_ranks["vf_loss"],
        "kl_loss": mean_over_ranks["kl_loss"],
        "explained_var": explained_var,
        "stage_hist": {str(k): v for k, v in sorted(cccs.stage_histogram().items())},
        "stage0_share": sum(stage == 0 for _, _, _, stage in scored) / len(scored),
        "fgo_kept": (every["fgo"].sum() / every["mask"].sum().clamp(min=1)).item(),
        "gen_tokens_per_s": every["mask"].sum().item() / max(slowest["t_generate"], 1e-9),
        "prompts_shortened": sum(r["prompts_shortened"] for r in ranks), **slowest,
        "skipped_updates": stats["skipped"],
    }


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
    rows = read_metrics(run_dir, quiet=True)  # (the summary says what it dropped)
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
    figure.savefig(run_dir / "curves.png.tmp", dpi=90, format="png")  # then renamed: whole or absent
    plt.close(figure)
    (run_dir / "curves.png.tmp").replace(run_dir / "curves.png")
    return run_dir / "curves.png"


def metrics_lines(path: Path, quiet: bool = False) -> list[tuple[str, dict]]:
    """metrics.jsonl's lines with their rows. Its last line, if cut off (a kill, a full disk while it was
    written), is dropped, in one line on stderr (unless quiet); a row that is not JSON before the end: UsageError."""
    lines = [line for line in path.read_text().splitlines() if line] if path.exists() else []
    parsed = []
    for number, line in enumerate(lines, 1):
        try:
            parsed.append((line, json.loads(line)))
        except ValueError:
            if number < len(lines):
                raise UsageError(f"{path}: line {number} is not a JSON row; remove it to read the run") from None
            if not quiet:
                print(f"{path}: its last line was cut off (the run was killed while writing it): dropped",
                      file=sys.stderr)
    return parsed


def read_metrics(run_dir: Path, quiet: bool = False) -> list[dict]:
    return [row for _, row in metrics_lines(run_dir / "metrics.jsonl", quiet)]


def summary(run_dir: Path, seconds: float | None = None) -> str:
    """What the run did, leading with what it was for: pass@1 at plain generation before -> after RL with its 95%
    intervals; then per problem set and difficulty, each set's pass@1 and pass@k with their intervals (and, where
    pass@k fell while pass@1 rose, what that means), the rollouts' reward by the stage it was earned at, the
    curriculum, the time it took, and where its files are."""
    rows = read_metrics(run_dir)
    evaluations = sorted((p for p in run_dir.glob("eval_step*.json") if read_json(p) is not None),
                         key=lambda p: int(p.stem.removeprefix("eval_step")))
    lines = [f"run {run_dir}: {rows[-1]['step'] if rows else 0} PPO steps" + (f" in {seconds / 60:.1f} min" if seconds else "")]
    if len(evaluations) >= 2:
        first, last = (json.loads(p.read_text()) for p in (evaluations[0], evaluations[-1]))
        names = f"{evaluations[0].stem.removeprefix('eval_')} -> {evaluations[-1].stem.removeprefix('eval_')}"
        lines.append(what_rl_is_for(first, last, names))
        lines.append(f"pass@1 at stage 0, {names}:")
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
            traded = variety_line(split, first.get(split, {}).get("overall", {}), table.get("overall", {}))
            if traded:
                lines.append(traded)
    if rows:
        lines += reward_lines(rows)
    reached = plain_generation(run_dir)
    if reached:
        lines.append(reached)
    if (run_dir / "rollouts.html").exists():
        lines.append(f"rollouts page: {run_dir / 'rollouts.html'} (open it in a browser: FGO's masks, the lines the "
                     f"tests ran, each problem's stage)")
    if (run_dir / "curves.png").exists():
        lines.append(f"curves: {run_dir / 'curves.png'}")
    lines.append(f"files: {run_dir}/metrics.jsonl, {run_dir}/checkpoint/"
                 + ("; continue with --resume " + str(run_dir) + " --steps N" if rows else ""))
    return "\n".join(lines)


def with_interval(row: dict, k: str = "1") -> str:
    """pass@k of an evaluation's row, with its 95% interval where the report has one."""
    value = row["pass@k"][k] if k != "1" else row["pass@1"]
    interval = row.get("ci95", {}).get(f"pass@{k}")
    return f"{value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def what_rl_is_for(first: dict, last: dict, names: str) -> str:
    """The summary's lead: pass@1 at plain generation (no canonical prefix) before -> after, each problem set's."""
    parts = []
    for split, table in last.items():
        before, after = first.get(split, {}).get("overall"), table.get("overall")
        if before and after:
            moved = after["pass@1"] - before["pass@1"]
            direction = f"up {moved:.3f}" if moved > 0 else f"down {-moved:.3f}" if moved < 0 else "unchanged"
            parts.append(f"{split} {with_interval(before)} -> {with_interval(after)} ({direction})")
    intervals = any("[" in part for part in parts)
    return (f"what RL is for, pass@1 at plain generation (no canonical prefix), {names}: " + "; ".join(parts)
            + (" ([95% intervals] over problems)" if intervals else ""))


def variety_line(split: str, before: dict, after: dict) -> str | None:
    """Where pass@k at the largest k fell while pass@1 rose: what that means, in a student's words; else None."""
    if "pass@k" not in after or "pass@k" not in before:
        return None
    largest = max(after["pass@k"], key=int)
    if largest == "1" or largest not in before["pass@k"]:
        return None
    if not (after["pass@k"][largest] < before["pass@k"][largest] and after["pass@1"] > before["pass@1"]):
        return None
    def within(k: str, value: float) -> bool:  # the earlier estimate inside the later one's 95% interval
        interval = after.get("ci95", {}).get(f"pass@{k}")
        return interval is not None and interval[0] <= value <= interval[1]
    inside = within("1", before["pass@1"]) and within(largest, before["pass@k"][largest])
    return (f"  {split:5s} pass@{largest} fell while pass@1 rose: the policy became surer of the programs it writes, "
            f"trading variety for accuracy (more of its samples are right, but fewer problems get one right among "
            f"{largest} tries)" + ("; both changes are inside the 95% intervals, so they may be noise" if inside else ""))


def weighted_mean(pairs: list[tuple[float, float]]) -> float:
    """The mean of (value, weight) pairs by weight."""
    return sum(value * weight for value, weight in pairs) / sum(weight for _, weight in pairs)


def reward_lines(rows: list[dict]) -> list[str]:
    """The rollouts' reward (Eq. 3), first 5 -> last 5 steps where any, read with the stage it was earned at:
    with CCCS a step's mean mixes stages, and falls as prompts lose their canonical prefixes (metrics
    reward_stage0 and stage0_share; a run logged before them: the mean alone)."""
    n = max(1, min(5, len(rows) // 2))  # a short run: its first and last halves
    every = [(row["reward_mean"], 1.0) for row in rows]
    overall = f"{weighted_mean(every[:n]):+.3f} -> {weighted_mean(every[-n:]):+.3f}"
    if any(row.get("stage0_share") is None for row in rows):
        return [f"rollout reward, first {n} -> last {n} steps: {overall}; stages now {rows[-1]['stage_hist']}"]
    if all(row["stage0_share"] == 1 for row in rows):
        return [f"rollout reward (Eq. 3; every rollout at plain generation), first {n} -> last {n} steps: {overall}"]
    plain = [(row["reward_stage0"], row["stage0_share"]) for row in rows if row["stage0_share"] > 0]
    prefixed = [((row["reward_mean"] - row["stage0_share"] * (row["reward_stage0"] or 0.0)) / (1 - row["stage0_share"]),
                 1 - row["stage0_share"]) for row in rows if row["stage0_share"] < 1]
    lines = [f"rollout reward (Eq. 3) by the stage it was earned at, first {n} -> last {n} steps where any:"]
    if plain:
        lines.append(f"  stage 0, plain generation (the whole program; the problems there grow from those that "
                     f"passed their completion stages to all): "
                     f"{weighted_mean(plain[:n]):+.3f} -> {weighted_mean(plain[-n:]):+.3f}")
    if prefixed:
        lines.append(f"  stages >= 1 (a canonical prefix gave part of the program): "
                     f"{weighted_mean(prefixed[:n]):+.3f} -> {weighted_mean(prefixed[-n:]):+.3f}")
    shares = [row["stage0_share"] for row in rows]
    lines.append(f"  all stages: {overall}, while the share of rollouts at stage 0 went {sum(shares[:n]) / n:.2f} -> "
                 f"{sum(shares[-n:]) / n:.2f}: this mean mixes stages, and falls as prompts lose their prefixes whatever "
                 f"the policy learns; pass@1 above, on fixed problems, measures progress; "
                 f"stages now {rows[-1]['stage_hist']}")
    return lines


def pass_at_k_line(split: str, before: dict, after: dict) -> str | None:
    """A problem set's overall pass@1 and pass@k at its largest k (the samples per problem), before -> after,
    each with its 95% interval over problems (support/evaluation.py: interval95, the normal approximation); None for an
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
    try:
        plot_run(run_dir)
        print(summary(run_dir))
    except UsageError as e:
        print(f"support.runs: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
