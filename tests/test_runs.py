"""Runs that stop and go on: Ctrl-C, --resume, the warm start's checkpoints, finished runs, models that
cannot be loaded, and the quick look from a saved tiny base."""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from support import config
import curriculum
from support import models, runs
import stepcoder
from conftest import ROOT, run_cli, tiny_args, write_problems

TIMINGS = ("t_generate", "t_score", "t_update", "gen_tokens_per_s")


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_an_interrupted_run_resumes_exactly_and_its_metrics_hold_each_step_once(tmp_path, monkeypatch, capsys):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    straight, _, _ = stepcoder.train(stepcoder.parse_config(tiny_args(tmp_path / "a", "--steps", "4", "--no-eval")))
    calls, real_generate = [], stepcoder.generate
    def interrupted_at_step_4(*args):
        calls.append(args[-1])
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_generate(*args)
    monkeypatch.setattr(stepcoder, "generate", interrupted_at_step_4)
    args = tiny_args(tmp_path / "b", "--steps", "4", "--no-eval", "--save-every", "2")
    with pytest.raises(stepcoder.Interrupted, match=r"at step 4 \(last checkpoint: step 2\).*--resume"):
        stepcoder.train(stepcoder.parse_config(args))
    run = tmp_path / "b" / "run"
    assert [r["step"] for r in metrics(run)] == [1, 2, 3]  # step 3 ran after the checkpoint of step 2
    monkeypatch.setattr(stepcoder, "generate", real_generate)
    stepcoder.train(stepcoder.parse_config(["--resume", str(run), "--steps", "4"]))
    assert "resuming" in capsys.readouterr().out
    a, b = metrics(straight), metrics(run)
    assert [r["step"] for r in b] == [1, 2, 3, 4]  # step 3 once: the resumed run redid it
    for row_a, row_b in zip(a, b):
        for key in row_a:
            if key not in TIMINGS:  # the same samples, curriculum, adapter and optimizer
                assert row_b[key] == pytest.approx(row_a[key], abs=1e-5), (row_a["step"], key)
    state_a = torch.load(straight / "checkpoint" / "state.pt", weights_only=False)["optimizer"]
    state_b = torch.load(run / "checkpoint" / "state.pt", weights_only=False)["optimizer"]
    assert state_a["state"][0]["step"] == state_b["state"][0]["step"]
    progress = [json.loads((r / "checkpoint" / "progress.json").read_text()) for r in (straight, run)]
    assert progress[0] == progress[1]
    pages = [(r / "rollouts.jsonl").read_text().splitlines() for r in (straight, run)]  # the rollouts page's steps:
    assert [json.loads(line)["step"] for line in pages[1]] == [1, 2, 3, 4] and pages[0] == pages[1]  # each once, the same


def test_an_interrupted_warm_start_continues_from_its_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "WARM_START_SAVE_EVERY", 4)
    problems = curriculum.load_problems(write_problems(tmp_path / "p.json"))
    cfg = stepcoder.Config(model="tiny", sft_steps=10, sft_lr=3e-3, max_prompt_tokens=256, max_new_tokens=64)
    def weights_after(interrupt_at: int | None):
        tok, model = models.build_tiny(problems, seed=0)
        checkpoint = tmp_path / f"sft-{interrupt_at}.pt"
        if interrupt_at:
            seen = []
            def count(module, args):
                seen.append(1)
                if len(seen) == interrupt_at:
                    raise KeyboardInterrupt
            hook = model.register_forward_pre_hook(count)
            with pytest.raises(KeyboardInterrupt):
                models.warm_start(model, tok, problems, cfg, random.Random(0), "cpu", checkpoint)
            hook.remove()
            assert torch.load(checkpoint, weights_only=False)["step"] == 4
            tok, model = models.build_tiny(problems, seed=0)  # a fresh process: the initial weights again
        models.warm_start(model, tok, problems, cfg, random.Random(0), "cpu", checkpoint)
        return model.state_dict()
    straight, resumed = weights_after(None), weights_after(7)
    assert all(torch.allclose(straight[k], resumed[k], atol=1e-6) for k in straight)


def test_resuming_a_finished_run_says_so_and_changes_nothing(tmp_path):
    stepcoder.train(stepcoder.parse_config(tiny_args(tmp_path, "--steps", "1")))
    run = tmp_path / "run"
    before = {f: f.read_bytes() for f in run.rglob("*") if f.is_file()}
    proc = run_cli(["--resume", str(run)])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "finished at step 1" in lines[0] and "--steps" in lines[0]
    assert before == {f: f.read_bytes() for f in run.rglob("*") if f.is_file()}


def test_ctrl_c_prints_one_line_and_leaves_no_process(tmp_path):
    args = tiny_args(tmp_path, "--steps", "50", "--no-eval")
    proc = subprocess.Popen([sys.executable, str(ROOT / "stepcoder.py"), *args], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout))
    reader.start()
    deadline = time.time() + 300
    while not any("step 1 |" in line for line in out) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # inside step 2: generating or scoring
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: the whole process group, workers included
    stderr = proc.stderr.read()
    proc.wait(timeout=60)
    reader.join()
    last = [line for line in stderr.splitlines() if line.startswith("stepcoder:")]
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert len(last) == 1 and re.fullmatch(rf"stepcoder: interrupted at step \d+ \(last checkpoint: step 0\); "
                                           rf"continue with: python3 stepcoder.py --resume {tmp_path / 'run'}", last[0])
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):  # no process of the group is left (sandbox workers included)
        os.killpg(proc.pid, 0)


def test_a_model_that_cannot_be_loaded_fails_fast_and_writes_nothing(tmp_path):
    data = write_problems(tmp_path / "p.json")
    base = ["--data", str(data), "--out", str(tmp_path / "run"), "--no-eval"]
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens there
    env.pop("HF_HUB_OFFLINE", None)
    started = time.time()
    proc = run_cli(["--model", "some-org/some-model", *base], env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "cannot reach the model hub" in lines[0], proc.stderr[-1000:]
    assert time.time() - started < 60  # seconds, not the hub client's retries
    proc = run_cli(["--model", "some-org/some-model", *base], env={**env, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "HF_HUB_OFFLINE" in proc.stderr
    proc = run_cli(["--model", "./no-such-model-dir", *base])
    assert proc.returncode == 2 and "no such directory" in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing written: the same command works once the model is there


def test_a_saved_tiny_base_is_tiny_and_starts_rl_at_once(tmp_path):
    run, _, _ = stepcoder.train(stepcoder.parse_config(tiny_args(tmp_path, "--steps", "0", "--no-eval")))
    cfg = stepcoder.parse_config(["--model", str(run / "base"), "--out", str(tmp_path / "look")])
    expected = {**config.TINY_DEFAULTS, "sft_steps": 0}  # warm-started already: no SFT on top
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert models.precision(cfg, "cuda", config.is_tiny(cfg.model)) == (False, torch.float32)
    look = run_cli(["--model", str(run / "base"), "--data", str(write_problems(tmp_path / "p.json")), "--steps", "1",
                    "--no-eval", "--show-rollouts", "1", "--out", str(tmp_path / "look")])
    assert look.returncode == 0, look.stderr[-2000:]
    assert "warm start" not in look.stderr and "step 1 |" in look.stdout and "--- problem" in look.stdout
    assert "no CUDA GPU" not in look.stderr  # tiny is the CPU demo: nothing to warn about


class Crash(Exception):
    """The process dies here."""


class Adapter:
    """What save_checkpoint needs of the peft model: save_pretrained writes the adapter's files."""
    def __init__(self, step: int):
        self.step = step

    def save_pretrained(self, directory: Path):
        directory.mkdir(parents=True)
        (directory / "adapter_model.safetensors").write_text(f"step {self.step}")


def crash_at(k: int, monkeypatch) -> list[str]:
    """The k-th filesystem operation of save_checkpoint dies: a write leaves half its file, a removal one file
    of its folder, a rename nothing. -> the operations as they run"""
    ops = []
    def dying(real, partial):
        def op(*args, **kwargs):
            ops.append(real.__name__)
            if len(ops) == k:
                partial(*args)
                raise Crash(f"at {real.__name__} {args[:2]}")
            return real(*args, **kwargs)
        return op
    monkeypatch.setattr(Path, "write_text", dying(Path.write_text, lambda path, text: Path.write_bytes(path, text[: len(text) // 2].encode())))
    monkeypatch.setattr(torch, "save", dying(torch.save, lambda obj, path: Path(path).write_bytes(b"PK")))
    monkeypatch.setattr(Path, "rename", dying(Path.rename, lambda path, target: None))
    monkeypatch.setattr(shutil, "rmtree", dying(shutil.rmtree, lambda path: (Path(path) / "state.pt").unlink(missing_ok=True)))
    return ops


def test_a_crash_at_any_point_of_a_save_leaves_a_checkpoint_that_resumes(tmp_path, monkeypatch):
    problems = curriculum.load_problems(write_problems(tmp_path / "p.json"))
    recovered, k, done = [], 0, False
    while not done:
        k += 1
        run_dir = tmp_path / f"crash{k}"
        run_dir.mkdir()
        value_head, cccs = torch.nn.Linear(4, 1), curriculum.Curriculum(problems)
        optimizer = torch.optim.AdamW(value_head.parameters())
        for step in (5, 6):  # each checkpoint's value head holds its step
            torch.nn.init.constant_(value_head.weight, step)
            if step == 5:
                runs.save_checkpoint(run_dir, Adapter(step), value_head, optimizer, cccs, step, random.Random(step))
                continue
            with monkeypatch.context() as m:
                ops = crash_at(k, m)
                try:
                    runs.save_checkpoint(run_dir, Adapter(step), value_head, optimizer, cccs, step, random.Random(step))
                    done = True
                except Crash:
                    pass
        runs.recover_checkpoint(run_dir)
        assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint"], k  # no checkpoint.tmp or .old left
        head = torch.nn.Linear(4, 1)
        step = runs.load_checkpoint(run_dir / "checkpoint", head, torch.optim.AdamW(head.parameters()),
                                    curriculum.Curriculum(problems), random.Random())
        assert step in (5, 6) and (step == 6 or not done), k
        assert torch.all(head.weight == step), k  # one checkpoint's files, not two mixed
        assert (run_dir / "checkpoint" / "adapter" / "adapter_model.safetensors").read_text() == f"step {step}"
        assert runs.check_run_dir(config.Config(out=str(run_dir), resume=str(run_dir), steps=10, eval=False)) == step
        recovered.append(step)
    # every operation of the save was a crash point (the patches saw runs.py's calls), the last one after the
    # new checkpoint was in place
    assert ops == ["rmtree", "write_text", "save", "write_text", "rename", "rename", "rmtree"] and k == len(ops) + 1
    assert recovered == [5, 5, 5, 5, 5, 6, 6, 6]  # from the second rename on (checkpoint.old, a complete .tmp): step 6


def test_recovering_a_run_without_a_complete_checkpoint_changes_nothing(tmp_path):
    (tmp_path / "checkpoint.tmp").mkdir()
    (tmp_path / "checkpoint.tmp" / "progress.json").write_text('{"st')
    runs.recover_checkpoint(tmp_path)
    runs.recover_checkpoint(tmp_path / "new-run")
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.tmp"] and not (tmp_path / "new-run").exists()


def test_the_summary_names_the_curves_png(tmp_path):
    row = {"step": 1, "reward_mean": 0.1, "pass_rate": 0.5, "kl": 0.01, "fgo_kept": 0.9, "stage_hist": {"0": 3, "1": 2}}
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({**row, "step": s}) + "\n" for s in (1, 2)))
    assert "curves:" not in runs.summary(tmp_path)
    assert runs.plot_run(tmp_path) == tmp_path / "curves.png"
    lines = runs.summary(tmp_path).splitlines()
    assert f"curves: {tmp_path}/curves.png" in lines
    assert lines[-1].startswith(f"files: {tmp_path}/metrics.jsonl, {tmp_path}/checkpoint/; continue with --resume")


def test_the_summary_counts_how_problems_reached_plain_generation(tmp_path):
    (tmp_path / "checkpoint").mkdir()
    problems = [[1, 0, 0.0, "threshold"], [2, 0, 0.0, "schedule"], [3, 0, 0.0, "schedule"], [4, 0, 0.0, None],
                [5, 2, 0.3, None]]  # 4: no completion stage; 5: still at stage 2
    curriculum_state = {"alpha": 0.3, "rho_t": 0.6, "enabled": True, "problems": problems}
    (tmp_path / "checkpoint" / "progress.json").write_text(json.dumps({"step": 3, "curriculum": curriculum_state}))
    assert ("problems at plain generation (stage 0): 1 moved there by the threshold, 2 by the schedule, 1 without "
            "completion stages; 1 of 5 still at completion stages") in runs.summary(tmp_path)


def metrics_rows(rewards: list[float], stage0_rewards: list, shares: list[float]) -> str:
    return "".join(json.dumps({"step": i + 1, "reward_mean": r, "reward_stage0": r0, "stage0_share": share,
                               "stage_hist": {"0": 3}}) + "\n"
                   for i, (r, r0, share) in enumerate(zip(rewards, stage0_rewards, shares)))


def test_the_summary_leads_with_pass_at_1_and_reads_the_reward_by_stage(tmp_path):
    # the default run's story: the mean reward falls as prompts lose their prefixes while pass@1 rises and pass@8
    # falls; fails if the lead line, a stage's reward, or the words for pass@8 falling are missing or wrong
    def report(pass1, pass8, interval):
        return {"train": {"overall": {"pass@1": pass1, "greedy": pass1, "n": 66, "reward": 0.0, "samples": 8,
                                      "pass@k": {"1": pass1, "8": pass8}, "ci95": {"pass@1": interval, "pass@8": [0.6, 0.8]}},
                          "problems": {}}}
    (tmp_path / "eval_step0.json").write_text(json.dumps(report(0.40, 0.697, [0.33, 0.47])))
    (tmp_path / "eval_step10.json").write_text(json.dumps(report(0.45, 0.682, [0.38, 0.52])))
    # steps 1-5: half at stage 0 (reward -0.2 there, +0.8 with a prefix); 6-10: all at stage 0, reward 0.0
    (tmp_path / "metrics.jsonl").write_text(metrics_rows([0.3] * 5 + [0.0] * 5, [-0.2] * 5 + [0.0] * 5,
                                                         [0.5] * 5 + [1.0] * 5))
    lines = runs.summary(tmp_path).splitlines()
    assert lines[1] == ("what RL is for, pass@1 at plain generation (no canonical prefix), step0 -> step10: "
                        "train 0.400 [0.330, 0.470] -> 0.450 [0.380, 0.520] (up 0.050) ([95% intervals] over problems)")
    assert any(line.startswith("  train pass@8 fell while pass@1 rose: the policy became surer") for line in lines)
    at_stage0 = next(line for line in lines if line.startswith("  stage 0, plain generation"))
    assert at_stage0.endswith(": -0.200 -> +0.000")
    with_prefix = next(line for line in lines if line.startswith("  stages >= 1"))
    assert with_prefix.endswith(": +0.800 -> +0.800")  # the last 5 steps with any prefixed rollouts: steps 1-5
    every = next(line for line in lines if line.startswith("  all stages:"))
    assert every.startswith("  all stages: +0.300 -> +0.000, while the share of rollouts at stage 0 went 0.50 -> 1.00")
    (tmp_path / "eval_step10.json").write_text(json.dumps(report(0.45, 0.75, [0.38, 0.52])))
    assert not any("fell while" in line for line in runs.summary(tmp_path).splitlines())  # pass@8 rose too


def test_show_rollouts_colours_masked_tokens_on_a_terminal_and_marks_them_elsewhere(capsys):
    from types import SimpleNamespace
    result = SimpleNamespace(status="pass", reward=1.0, executed_lines=frozenset({1}))
    coloured = runs.show_rollout(SimpleNamespace(problem_id=7), 0, "", ["a = 1", "\n# x"], [1.0, 0.0], result, colour=True)
    assert coloured.splitlines()[2:] == ["   1 + a = 1", f"   2 + {runs.MASKED_ON}# x{runs.MASKED_OFF}"]
    assert "⟦" not in coloured
    rollouts = SimpleNamespace(token_ends=[[5, 9]], texts=["a = 1\n# x"], problems=[SimpleNamespace(problem_id=7)],
                               stages=[0], prefixes=[""])
    runs.show_rollouts(rollouts, [result], torch.tensor([[1.0, 0.0]]), 1)  # captured: not a terminal
    printed = capsys.readouterr().out
    assert "   1 + a = 1⟦\n   2 + # x⟧" in printed and "\x1b[" not in printed
