"""How the trainer slows down when another process competes for the cores, and why.

    python3 bench/under_load.py                 # 3 repeats of each arm, about 4 minutes on 2 cores
    python3 bench/under_load.py --repeats 1 --steps 10

Each arm runs the same CPU work in a fresh process: `--steps` warm-start (SFT) steps of the tiny model,
the trainer's heaviest CPU phase, timed after one step of warm-up. The arms: torch's default OpenMP
settings and OMP_WAIT_POLICY=PASSIVE (what stepcoder.py sets unless the environment says otherwise),
each alone and beside a competing load of one busy process per core. It prints seconds per step and,
for each setting, the slowdown under load (loaded / alone) against the fair share: with as many busy
processes as cores, a process that shares fairly runs about 2x slower. The arms alternate, so a
drifting host affects each alike.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORK = r"""
import json, random, sys, time, torch
sys.path.insert(0, ROOT)
import curriculum
from support import models
from support.config import parse_config
problems = curriculum.load_problems(ROOT + "/data/train.json")
cfg = parse_config(["--model", "tiny", "--sft-steps", str(STEPS + 1)])
tok, model = models.build_tiny(problems, 0)
params = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(params, lr=cfg.sft_lr)
rng = random.Random(0)
times = []
for _ in range(STEPS + 1):
    batch = rng.sample(problems, cfg.sft_batch_size)
    texts = [curriculum.build_prompt(p, tok) + p.canonical_solution + tok.eos_token for p in batch]
    enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=672)
    start = time.perf_counter()
    loss = model(**enc, labels=enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    times.append(time.perf_counter() - start)
print(json.dumps({"seconds_per_step": sum(times[1:]) / STEPS, "threads": torch.get_num_threads()}))
"""


def run_arm(env_extra: dict, loaded: bool, steps: int) -> float:
    hogs = []
    if loaded:  # one busy process per core, as another user's job would be
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
        time.sleep(0.5)
    try:
        env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
        env.update(env_extra)
        code = f"ROOT = {ROOT!r}\nSTEPS = {steps}\n" + WORK
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])["seconds_per_step"]
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=15, help="timed warm-start steps per arm")
    args = ap.parse_args()
    settings = {"torch default (OMP_WAIT_POLICY unset)": {},
                "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}}
    results = {(name, loaded): [] for name in settings for loaded in (False, True)}
    for repeat in range(args.repeats):
        for name, env in settings.items():
            for loaded in (False, True):
                seconds = run_arm(env, loaded, args.steps)
                results[name, loaded].append(seconds)
                print(f"repeat {repeat + 1}: {name:40s} {'loaded' if loaded else 'alone ':6s} {seconds:.3f} s/step", flush=True)
    print(f"\n{os.cpu_count()} cores, {args.steps} warm-start steps per arm, {args.repeats} repeats (min/median/max s/step):")
    for name in settings:
        alone, loaded = results[name, False], results[name, True]
        print(f"{name:40s} alone {min(alone):.3f}/{statistics.median(alone):.3f}/{max(alone):.3f}  "
              f"loaded {min(loaded):.3f}/{statistics.median(loaded):.3f}/{max(loaded):.3f}  "
              f"slowdown {statistics.median(loaded) / statistics.median(alone):.2f}x (fair share ~2x)")
    base = statistics.median(results["torch default (OMP_WAIT_POLICY unset)", True])
    passive = statistics.median(results["OMP_WAIT_POLICY=PASSIVE", True])
    print(f"under load, PASSIVE vs default: {base / passive:.2f}x faster")


if __name__ == "__main__":
    main()
