"""Runs that stop and go on: Ctrl-C, --resume, the warm start's checkpoints, finished runs, models that
cannot be loaded, and the quick look from a saved tiny base."""
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from support import config
import curriculum
from support import models
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


def test_an_interrupted_warm_start_continues_from_its_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "WARM_START_SAVE_EVERY", 4)
    problems = curriculum.load_problems(write_problems(tmp_path / "p.json"))
    cfg = stepcoder.Config(model="tiny", sft_steps=10, sft_lr=3e-3, max_prompt_tokens=256, max_new_tokens=64)
    def weights_after(interrupt_at: int | None):
        tok, model = stepcoder.build_tiny(problems, seed=0)
        checkpoint = tmp_path / f"sft-{interrupt_at}.pt"
        if interrupt_at:
            seen = []
            def count(module, args):
                seen.append(1)
                if len(seen) == interrupt_at:
                    raise KeyboardInterrupt
            hook = model.register_forward_pre_hook(count)
            with pytest.raises(KeyboardInterrupt):
                stepcoder.warm_start(model, tok, problems, cfg, random.Random(0), "cpu", checkpoint)
            hook.remove()
            assert torch.load(checkpoint, weights_only=False)["step"] == 4
            tok, model = stepcoder.build_tiny(problems, seed=0)  # a fresh process: the initial weights again
        stepcoder.warm_start(model, tok, problems, cfg, random.Random(0), "cpu", checkpoint)
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
    assert models.precision(cfg, "cuda", stepcoder.is_tiny(cfg.model)) == (False, torch.float32)
    look = run_cli(["--model", str(run / "base"), "--data", str(write_problems(tmp_path / "p.json")), "--steps", "1",
                    "--no-eval", "--show-rollouts", "1", "--out", str(tmp_path / "look")])
    assert look.returncode == 0, look.stderr[-2000:]
    assert "warm start" not in look.stderr and "step 1 |" in look.stdout and "--- problem" in look.stdout
    assert "no CUDA GPU" not in look.stderr  # tiny is the CPU demo: nothing to warn about
