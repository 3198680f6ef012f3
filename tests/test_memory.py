"""support/memory.py: the memory plan on paper, without a GPU: what fits 24, 16 and 12 GiB of free memory for the
1.3B and 6.7B configs, the per-model defaults, the one-line refusal, the bench's numbers (the same function),
and `stepcoder.py --memory-plan`."""
import importlib.util
import io
import json
from contextlib import redirect_stdout

import pytest
import torch

import stepcoder
from conftest import ROOT, run_cli
from support import config, memory

ARCH = {"1.3b": memory.MODELS["deepseek-coder-1.3b"], "6.7b": memory.MODELS["deepseek-coder-6.7b"]}


def cfg_of(*argv):
    return stepcoder.parse_config(["--model", *argv])


def generic(size):
    """The trainer's generic defaults (1.3B's: merged sampler, 32 rows at once) on a model of this size, as a
    local directory of it gets them."""
    return config.Config(model=f"deepseek-coder-{size}")


def test_the_issue_numbers():
    # 1.3B at the defaults: 11.9 GiB; 6.7B at the same settings: 39.0, a 12.6 GiB 16-bit copy and a 22.3 GiB KV cache
    row = memory.budget(ARCH["6.7b"], generic("6.7b"))
    assert row["merged sampler (16-bit copy)"] == pytest.approx(12.55, abs=0.01)
    assert row["generate: KV cache"] == pytest.approx(22.25, abs=0.01)
    assert row[memory.PEAK] == pytest.approx(39.00, abs=0.01)
    assert memory.peak(ARCH["1.3b"], cfg_of("deepseek-coder-1.3b")) == pytest.approx(11.90, abs=0.01)


@pytest.mark.parametrize("size, free, changes, planned", [
    ("1.3b", 24, {}, 11.90),
    ("1.3b", 16, {}, 11.90),
    ("1.3b", 12, {"sampler": "policy"}, 9.39),  # 11.9 + 1 GiB headroom is over 12
    ("6.7b", 24, {"sampler": "policy", "gen_batch_size": 16}, 15.32),
    ("6.7b", 16, {"sampler": "policy", "gen_batch_size": 8}, 9.76),
    ("6.7b", 12, {"sampler": "policy", "gen_batch_size": 8}, 9.76),
])
def test_fit_picks_the_first_settings_that_fit(size, free, changes, planned):
    cfg = generic(size)
    assert memory.fit(ARCH[size], cfg, free) == changes
    assert memory.peak(ARCH[size], cfg, changes) == pytest.approx(planned, abs=0.01)
    assert memory.peak(ARCH[size], cfg, changes) + memory.HEADROOM_GIB <= free


def test_every_known_model_defaults_fit_24_gib():
    # the per-model defaults are what the plan picks for 24 GiB from the generic ones, and fit as they are
    for name in config.MODEL_ALIASES:
        size = name.rsplit("-", 1)[1]
        assert config.defaults_for(name) == memory.fit(ARCH[size], generic(size), 24), name
        assert memory.fit(ARCH[size], cfg_of(name), 24) == {}, name
    assert cfg_of("deepseek-ai/deepseek-coder-6.7b-instruct").gen_batch_size == 16  # the hub id too


def test_a_given_flag_wins_over_the_model_defaults():
    cfg = cfg_of("deepseek-coder-6.7b", "--sampler", "merged", "--gen-batch-size", "4")
    assert (cfg.sampler, cfg.gen_batch_size) == ("merged", 4)
    assert cfg.given >= {"sampler", "gen_batch_size"} and "minibatch_size" not in cfg.given


@pytest.mark.parametrize("free, gen_batch_size", [(24, 16), (16, 8), (12, 8)])
def test_defaults_that_do_not_fit_change_in_one_line(free, gen_batch_size):
    cfg = cfg_of("deepseek-coder-6.7b", "--steps", "5")
    line = memory.check(cfg, free, "a fake GPU")
    assert "\n" not in line and f"{free:.1f} GiB free on a fake GPU" in line
    assert (cfg.sampler, cfg.gen_batch_size) == ("policy", gen_batch_size)
    assert ("fits" in line) == (gen_batch_size == 16)
    if gen_batch_size != 16:
        assert "15.3 GiB" in line and "--gen-batch-size 8 (9.8 GiB)" in line


def test_the_user_flag_is_kept_while_a_default_changes():
    # 1.3B at 12 GiB with --sampler merged given: the generation batch halves instead
    cfg = cfg_of("deepseek-coder-1.3b", "--sampler", "merged")
    assert "--gen-batch-size 16" in memory.check(cfg, 12)
    assert (cfg.sampler, cfg.gen_batch_size) == ("merged", 16)


@pytest.mark.parametrize("free, would", [(24, "--sampler policy --gen-batch-size 16 would fit (15.3 GiB)"),
                                         (16, "--sampler policy --gen-batch-size 8 would fit (9.8 GiB)"),
                                         (12, "--sampler policy --gen-batch-size 8 would fit (9.8 GiB)")])
def test_given_flags_that_do_not_fit_stop_with_one_line(free, would):
    cfg = cfg_of("deepseek-coder-6.7b", "--sampler", "merged", "--gen-batch-size", "32")
    with pytest.raises(config.UsageError) as e:
        memory.check(cfg, free, "a fake GPU")
    line = str(e.value)
    assert "\n" not in line and "39.0 GiB" in line and f"{free:.1f} GiB free on a fake GPU" in line and would in line
    assert (cfg.sampler, cfg.gen_batch_size) == ("merged", 32)  # unchanged


def test_the_refusal_stops_the_trainer_before_anything_is_written(tmp_path, monkeypatch, capsys):
    # a CUDA device faked: the plan runs before the weights load (a hub model: no network is tried)
    monkeypatch.setattr(stepcoder.distributed, "init", lambda: torch.device("cuda"))
    monkeypatch.setattr(memory, "free_gib", lambda device: 24.0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a fake 24 GiB GPU")
    out = tmp_path / "run"
    argv = ["--model", "deepseek-coder-6.7b", "--gen-batch-size", "32", "--data", str(ROOT / "data" / "train.json")]
    assert stepcoder.main([*argv, "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "24.0 GiB free" in lines[0] and "--gen-batch-size 16 would fit" in lines[0], lines
    assert not out.exists()


def test_the_bench_budget_is_the_same_function():
    spec = importlib.util.spec_from_file_location("gpu_memory", ROOT / "bench" / "gpu_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = cfg_of("deepseek-coder-6.7b")
    assert bench.budget("6.7b", cfg, 330) == memory.budget(ARCH["6.7b"], cfg, 330)
    printed = io.StringIO()
    with redirect_stdout(printed):
        bench.print_budget(memory.PROMPT_TOKENS)
    peaks = printed.getvalue().splitlines()[-1]
    for arch, flags in bench.BUDGET_SETTINGS.values():  # the table's peaks are the plan's for those flags
        assert f"{memory.peak(ARCH[arch], cfg_of(f'deepseek-coder-{arch}', *flags)):.2f}" in peaks


def test_a_local_config_is_read_from_disk(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(ARCH["6.7b"]))
    assert memory.architecture(str(tmp_path)) == ARCH["6.7b"]
    cfg = config.Config(model=str(tmp_path))
    assert memory.fit(ARCH["6.7b"], cfg, 24) == {"sampler": "policy", "gen_batch_size": 16}
    assert stepcoder.main(["--model", str(tmp_path), "--memory-plan", "--out", str(tmp_path / "run")]) == 0
    assert "| peak (fixed + the larger phase) | 39.00 |" in capsys.readouterr().out
    assert memory.architecture("tiny") is None and memory.architecture(str(tmp_path / "nowhere")) is None


def test_memory_plan_prints_the_table_and_exits(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(["--model", "deepseek-coder-6.7b", "--memory-plan", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "| generate: KV cache | 11.12 |" in text and "| peak (fixed + the larger phase) | 15.32 |" in text
    assert "24 GiB free: these settings (15.3 GiB)" in text and "16 GiB free: --gen-batch-size 8 (9.8 GiB)" in text
    assert not out.exists() and list(tmp_path.iterdir()) == []


def saved_run(tmp_path, **settings):
    """A run directory as a 6.7B run's start leaves it: its config.json, with the settings it ran with."""
    from dataclasses import asdict
    cfg = config.Config(model="deepseek-coder-6.7b", data=str(ROOT / "data" / "train.json"), out=str(tmp_path),
                        eval=False, **settings)
    (tmp_path / "config.json").write_text(json.dumps(asdict(cfg)))
    return tmp_path


@pytest.mark.parametrize("settings", [{"sampler": "policy", "gen_batch_size": 16},  # what 24 GiB gave it
                                      {"sampler": "merged", "gen_batch_size": 32}])  # a larger GPU's
def test_resume_keeps_the_runs_settings_or_stops_on_them(tmp_path, settings):
    run = saved_run(tmp_path, **settings)
    cfg = stepcoder.parse_config(["--resume", str(run)])
    if settings["sampler"] == "policy":
        assert "fits" in memory.check(cfg, 24, "a fake GPU")
    with pytest.raises(config.UsageError) as e:  # 12 GiB free: the start would have changed them; a resume stops
        memory.check(cfg, 12, "a fake GPU")
    line = str(e.value)
    assert "\n" not in line and "12.0 GiB free on a fake GPU" in line and f"--resume {run} keeps the run's settings" in line
    assert "--gen-batch-size 8 would fit" in line
    assert {name: getattr(cfg, name) for name in settings} == settings  # never changed


def test_a_resume_that_does_not_fit_stops_before_anything_is_written(tmp_path, monkeypatch, capsys):
    run = saved_run(tmp_path, sampler="policy", gen_batch_size=16)
    monkeypatch.setattr(stepcoder.distributed, "init", lambda: torch.device("cuda"))
    monkeypatch.setattr(memory, "free_gib", lambda device: 12.0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a fake 12 GiB GPU")
    before = {f: f.read_bytes() for f in run.rglob("*")}
    assert stepcoder.main(["--resume", str(run)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "12.0 GiB free on a fake 12 GiB GPU" in lines[0] and "keeps the run's settings" in lines[0]
    assert before == {f: f.read_bytes() for f in run.rglob("*")}
