"""Runs that stop and go on: Ctrl-C and SIGTERM, --resume, a crash while any file is written, a cut-off
metrics line, the warm start's checkpoints, finished runs, models that cannot be loaded, and the quick look
from a saved tiny base."""
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
from support import evaluation, models, runs
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


def test_ctrl_c_finishes_the_step_saves_it_says_so_and_leaves_no_process(tmp_path):
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
    with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:  # the sandbox's workers (a session of their own)
        workers = [int(pid) for pid in f.read().split()]
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: the whole process group
    stderr = proc.stderr.read()
    proc.wait(timeout=60)
    reader.join()
    said = [line for line in stderr.splitlines() if line.startswith("stepcoder:")]
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    step = int(re.fullmatch(r"stepcoder: Ctrl-C: stopping after step (\d+), saved then; press Ctrl-C again to stop "
                            r"now, losing step \1", said[0])[1])  # at once, then when the step is saved:
    assert len(said) == 2 and said[1] == (f"stepcoder: stopped by Ctrl-C after step {step} (last checkpoint: step "
                                          f"{step}); continue with: python3 stepcoder.py --resume {tmp_path / 'run'}")
    assert json.loads((tmp_path / "run" / "checkpoint" / "progress.json").read_text())["step"] == step
    assert [row["step"] for row in metrics(tmp_path / "run")][-1] == step
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):  # no process of the group is left, nor any sandbox worker
        os.killpg(proc.pid, 0)
    assert workers and [pid for pid in workers if os.path.exists(f"/proc/{pid}")] == []


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


# ------------------------------------------------ every file whole or absent, whatever stops the run (issue 41)

def crash_writing(name: str, monkeypatch) -> None:
    """Writing a file whose name starts with `name` dies half-way: half its text on disk, then Crash."""
    real = Path.write_text
    def dying(path, text, *args, **kwargs):
        if Path(path).name.startswith(name):
            real(path, text[: len(text) // 2])
            raise Crash(f"while writing {path}")
        return real(path, text, *args, **kwargs)
    monkeypatch.setattr(Path, "write_text", dying)


def test_a_crash_while_config_json_is_written_leaves_a_directory_the_next_run_takes(tmp_path, monkeypatch):
    cfg = stepcoder.parse_config(tiny_args(tmp_path, "--no-eval"))
    with monkeypatch.context() as m:
        crash_writing("config.json", m)
        with pytest.raises(Crash):
            runs.prepare_run_dir(cfg)
    run = tmp_path / "run"
    assert not (run / "config.json").exists()  # never half of it: `--resume` would read it
    assert runs.check_run_dir(cfg) == 0  # the same command starts the run (the temporary file is no run)
    runs.prepare_run_dir(cfg)
    assert json.loads((run / "config.json").read_text())["seed"] == 1 and not (run / "config.json.tmp").exists()


def test_a_crash_while_an_evaluation_is_written_leaves_it_to_be_done(tmp_path, monkeypatch):
    run = runs.Run(tmp_path, progress={"where": "", "saved": "step 3"})
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "progress.json").write_text(json.dumps({"step": 3, "curriculum": {"enabled": False}}))
    (tmp_path / "config.json").write_text("{}")
    report = {"train": {"overall": {"pass@1": 0.5, "greedy": 0.5, "reward": 0.0, "n": 2}}}
    monkeypatch.setattr(evaluation, "refresh_sampler", lambda sampler, policy: None)
    monkeypatch.setattr(evaluation, "evaluate", lambda agent, problems, settings, tag: report["train"])
    agent = models.Agent(tok=None, policy=None, value_head=None, sampler=None, device=torch.device("cpu"), scaler=None)
    cfg = config.Config(out=str(tmp_path), resume=str(tmp_path), steps=3, eval=True)
    evaluation.run_evaluation(agent, {"train": []}, cfg, run, 0)
    with monkeypatch.context() as m:
        crash_writing("eval_step3.json", m)
        with pytest.raises(Crash):
            evaluation.run_evaluation(agent, {"train": []}, cfg, run, 3)
    assert not (tmp_path / "eval_step3.json").exists()  # never half of it
    assert runs.check_run_dir(cfg) == 3  # not finished: --resume evaluates step 3
    assert "run " in runs.summary(tmp_path)  # the summary reads the complete evaluations only
    (tmp_path / "eval_step3.json").write_text('{"train": {"ove')  # what a crash left before writes were atomic
    assert runs.check_run_dir(cfg) == 3 and "run " in runs.summary(tmp_path)
    evaluation.run_evaluation(agent, {"train": []}, cfg, run, 3)
    with pytest.raises(config.UsageError, match="finished at step 3"):
        runs.check_run_dir(cfg)


def test_a_crash_while_the_curves_are_drawn_leaves_no_half_png(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure
    row = {"step": 1, "reward_mean": 0.1, "pass_rate": 0.5, "kl": 0.01, "fgo_kept": 0.9, "stage_hist": {"0": 3}}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    def dying(figure, path, **kwargs):
        Path(path).write_bytes(b"\x89PNG\r\n\x1a\n half")
        raise Crash("while drawing")
    monkeypatch.setattr(Figure, "savefig", dying)
    with pytest.raises(Crash):
        runs.plot_run(tmp_path)
    assert not (tmp_path / "curves.png").exists() and "curves:" not in runs.summary(tmp_path)


@pytest.fixture(scope="module")
def straight_base(tmp_path_factory):
    """The run directory of a warm start that nothing interrupted (tiny_args, --steps 0)."""
    tmp = tmp_path_factory.mktemp("straight-base")
    return stepcoder.train(stepcoder.parse_config(tiny_args(tmp, "--steps", "0", "--no-eval")))[0]


@pytest.mark.parametrize("left", ["crashed", "unmarked"])  # base.tmp as the crash left it; an unmarked base/ (older runs)
def test_a_crash_while_the_tiny_base_is_written_is_rebuilt_on_resume(tmp_path, monkeypatch, left, straight_base):
    from transformers import PreTrainedTokenizerFast
    (tmp_path / "b").mkdir()
    with monkeypatch.context() as m:
        def dying(tok, directory, *args, **kwargs):
            (Path(directory) / "tokenizer.json").write_text("{")
            raise Crash("while the tokenizer is written")
        m.setattr(PreTrainedTokenizerFast, "save_pretrained", dying)
        with pytest.raises(Crash):
            stepcoder.train(stepcoder.parse_config(tiny_args(tmp_path / "b", "--steps", "0", "--no-eval")))
    run = tmp_path / "b" / "run"
    assert not (run / "base").exists()  # the base is whole or absent
    if left == "unmarked":
        (run / "base.tmp").rename(run / "base")
    stepcoder.train(stepcoder.parse_config(["--resume", str(run)]))
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("base")) == ["base"]
    assert (run / "base" / config.TINY_MARKER).is_file()
    from safetensors.torch import load_file
    rebuilt, expected = (load_file(r / "base" / "model.safetensors") for r in (run, straight_base))
    assert all(torch.equal(rebuilt[k], expected[k]) for k in expected)  # the same warm start, again


def test_a_cut_off_last_metrics_line_is_dropped_in_one_line(tmp_path, capsys):
    rows = [{"step": s, "reward_mean": 0.1 * s, "pass_rate": 0.5, "kl": 0.01, "fgo_kept": 0.9,
             "stage_hist": {"0": 3}} for s in (1, 2, 3)]
    whole = "".join(json.dumps(row) + "\n" for row in rows[:2])
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "metrics.jsonl").write_text(whole + json.dumps(rows[2])[:30])  # killed while writing step 3
    assert runs.main([str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"run {tmp_path}: 2 PPO steps")
    assert len(err.strip().splitlines()) == 1 and "last line was cut off" in err and "dropped" in err
    runs.keep_metrics_until(tmp_path / "metrics.jsonl", 3)  # a resume from step 3's checkpoint... (none: 2 rows)
    assert (tmp_path / "metrics.jsonl").read_text() == whole
    runs.keep_metrics_until(tmp_path / "metrics.jsonl", 1)
    assert (tmp_path / "metrics.jsonl").read_text() == whole.splitlines(keepends=True)[0]
    (tmp_path / "metrics.jsonl").write_text("{nonsense\n" + whole)  # not a cut-off line: refused, in one line
    assert runs.main([str(tmp_path)]) == 2
    assert "line 1 is not a JSON row" in capsys.readouterr().err


def test_a_crash_while_a_resume_trims_the_metrics_keeps_them(tmp_path, monkeypatch):
    whole = "".join(json.dumps({"step": s, "reward_mean": 0.0}) + "\n" for s in (1, 2, 3))
    (tmp_path / "metrics.jsonl").write_text(whole)
    with monkeypatch.context() as m:
        crash_writing("metrics.jsonl", m)
        with pytest.raises(Crash):
            runs.keep_metrics_until(tmp_path / "metrics.jsonl", 2)
    assert (tmp_path / "metrics.jsonl").read_text() == whole  # all of it still, not half


# ------------------------------------------------ Ctrl-C and SIGTERM keep the last finished step (issue 41)

def signals_in_step(monkeypatch, step: int, *signums) -> None:
    """While step `step` generates (one generate call per step without --eval), these signals reach the process."""
    calls, real_generate = [], stepcoder.generate
    def generate(*args):
        calls.append(1)
        if len(calls) == step:
            for signum in signums:
                os.kill(os.getpid(), signum)
                time.sleep(0.05)  # the handler runs before the next signal
        return real_generate(*args)
    monkeypatch.setattr(stepcoder, "generate", generate)


def test_a_second_ctrl_c_abandons_the_step_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capfd):
    before = signal.getsignal(signal.SIGINT)  # default_int_handler; SIG_IGN in a shell's background job
    signals_in_step(monkeypatch, 2, signal.SIGINT, signal.SIGINT)
    with pytest.raises(stepcoder.Interrupted, match=r"interrupted at step 2 \(last checkpoint: step 0\).*--resume") as e:
        stepcoder.train(stepcoder.parse_config(tiny_args(tmp_path, "--steps", "3", "--no-eval")))
    assert e.value.exit_code == 130
    err = capfd.readouterr().err  # (written to file descriptor 2)
    assert "stepcoder: Ctrl-C: stopping after step 2, saved then; press Ctrl-C again to stop now, losing step 2" in err
    run = tmp_path / "run"
    assert [r["step"] for r in metrics(run)] == [1]
    assert json.loads((run / "checkpoint" / "progress.json").read_text())["step"] == 0
    assert signal.getsignal(signal.SIGINT) is before  # train put the handlers back


def test_signals_during_a_save_wait_for_it_and_the_run_stops_after_it(tmp_path, monkeypatch):
    real_save, saves = stepcoder.save_checkpoint, []
    def signalled_save(run_dir, *args):
        saves.append(args[-2])  # the step
        if args[-2] == 2:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
                os.kill(os.getpid(), signum)
                time.sleep(0.05)
        return real_save(run_dir, *args)
    monkeypatch.setattr(stepcoder, "save_checkpoint", signalled_save)
    args = tiny_args(tmp_path, "--steps", "4", "--save-every", "2", "--no-eval")
    with pytest.raises(stepcoder.Interrupted, match=r"stopped by SIGTERM after step 2 \(last checkpoint: step 2\)") as e:
        stepcoder.train(stepcoder.parse_config(args))
    assert e.value.exit_code == 143 and saves == [0, 2]
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"]
    assert json.loads((run / "checkpoint" / "progress.json").read_text())["step"] == 2
    assert torch.load(run / "checkpoint" / "state.pt", weights_only=False)["optimizer"]["state"][0]["step"] > 0


@pytest.mark.slow
def test_sigterm_saves_the_last_finished_step_and_the_run_resumes_exactly(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    straight = run_cli(tiny_args(tmp_path / "a", "--steps", "5", "--no-eval"))
    assert straight.returncode == 0, straight.stderr[-2000:]
    run = tmp_path / "b" / "run"
    proc = subprocess.Popen([sys.executable, str(ROOT / "stepcoder.py"), *tiny_args(tmp_path / "b", "--steps", "5",
                            "--no-eval")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and '"step": 2,' not in (
            (run / "metrics.jsonl").read_text() if (run / "metrics.jsonl").exists() else ""):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # step 2 is logged: the signal lands at its end or in step 3
    out, err = proc.communicate(timeout=300)
    saved = json.loads((run / "checkpoint" / "progress.json").read_text())["step"]
    assert proc.returncode == 143 and saved in (2, 3), err[-2000:]
    assert [r["step"] for r in metrics(run)] == list(range(1, saved + 1))  # the step it stopped after, saved
    assert (f"stepcoder: stopped by SIGTERM after step {saved} (last checkpoint: step {saved}); "
            f"continue with: python3 stepcoder.py --resume {run}") in err.splitlines()
    resumed = run_cli(["--resume", str(run)])
    assert resumed.returncode == 0 and f"from its checkpoint at step {saved}" in resumed.stdout, resumed.stderr[-2000:]
    assert f"budget: 12 problems, {5 - saved} PPO steps (steps {saved + 1}-5)" in resumed.stdout
    a, b = metrics(tmp_path / "a" / "run"), metrics(run)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5]
    for row_a, row_b in zip(a, b):
        assert {k: v for k, v in row_a.items() if k not in TIMINGS} == {k: v for k, v in row_b.items() if k not in TIMINGS}
