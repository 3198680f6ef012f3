"""A generated family of APPS-style stdin problems, composed from parts, with a held-out split of new combinations.

    python3 -m support.family --out data/family --seed 0                  # writes train.json and test.json (APPS+ layout)
    python3 -m support.family --out /tmp/fam --seed 1 --n-train 300 --n-test 60 --overwrite
    python stepcoder.py --model tiny --data data/family/train.json --test-data data/family/test.json

Why: on the 88 bundled problems the tiny CPU model memorises the training set and solves no held-out
problem. Here every problem is one combination of four kinds of part:
    shape  how the numbers arrive: one line; a count then a line; a count then one number a line; words
    steps  0 to 2 filters/transformations applied to each number in order (keep evens, above k, abs, clamp...)
    agg    what is computed from the numbers left: sum, count, max, min, or the list itself
    fmt    how it is printed: the number, YES/NO against a threshold, the sign as a word, the list or EMPTY
The canonical solution is written from the parts as a person would (a loop with an `if` per step,
if/elif/else for the output), so its CCCS split points (curriculum.split_points) range from 1 to 9.
The unit tests are the canonical solution RUN on generated inputs (a random example, the empty
list, one number, all negative, two more random). The count-then-line shape guards against a
line longer than the count, which no test has: a line FGO coverage masking can mask.

Split rule (fixed, independent of the seed): a combination (shape, steps, agg, fmt) is held out
when crc32 of its name is 0 mod 5 (`held_out`); the seed only picks which combinations and which
constants (k, thresholds) are drawn. So every held-out problem is a combination never seen in
training, and `generate` checks that each of its parts occurs in the training problems.

Departures from the paper (StepCoder trains on APPS+, human-written problems), and why:
1. Problems are generated from templates, not written by people: a held-out set the tiny model can
   partly solve after the warm start needs training problems that share parts with it; APPS+ is
   too hard and too varied for a model of 1M parameters to transfer anything.
2. Only stdin problems on lists of small integers (or word lengths): the family must be narrow
   enough to generalise within and short enough for 160 generated tokens.
3. Expected outputs come from running the canonical solution, not from a separate reference;
   the solution is trusted by construction (tests/test_family.py re-runs it in the sandbox).
"""
import argparse
import contextlib
import io
import itertools
import json
import random
import sys
import zlib
from pathlib import Path

from curriculum import split_points

SHAPES = {  # name: (reader code, statement phrase, -----Input----- text)
    "line": (["nums = list(map(int, input().split()))"],
             "a list of integers", "One line with the integers, separated by spaces (the line may be empty)."),
    "count": (["n = int(input())", "nums = list(map(int, input().split()))", "if len(nums) > n:", "    nums = nums[:n]"],
              "a list of n integers", "The first line holds n (0 <= n <= 100), the second line the n integers, separated by spaces."),
    "lines": (["n = int(input())", "nums = []", "for _ in range(n):", "    nums.append(int(input()))"],
              "a list of n integers", "The first line holds n (0 <= n <= 100); each of the next n lines holds one integer."),
    "words": (["nums = [len(word) for word in input().split()]"],
              "a line of words; each word stands for its length", "One line of lowercase words separated by spaces (the line may be empty)."),
}
STEPS = {  # name: (code in the loop over x, statement phrase, constants drawn for it)
    "even": (["if x % 2 != 0:", "    continue"], "keep only the even numbers", {}),
    "odd": (["if x % 2 == 0:", "    continue"], "keep only the odd numbers", {}),
    "above": (["if x <= {k}:", "    continue"], "keep only the numbers greater than {k}", {"k": (-3, 3)}),
    "below": (["if x >= {k}:", "    continue"], "keep only the numbers less than {k}", {"k": (-2, 5)}),
    "nonzero": (["if x == 0:", "    continue"], "drop every zero", {}),
    "multiple": (["if x % {d} != 0:", "    continue"], "keep only the multiples of {d}", {"d": (3, 4)}),
    "abs": (["if x < 0:", "    x = -x"], "replace each negative number by its absolute value", {}),
    "clamp": (["if x < {lo}:", "    x = {lo}", "elif x > {hi}:", "    x = {hi}"],
              "replace each number below {lo} by {lo} and each number above {hi} by {hi}", {"lo": (-4, -1), "hi": (2, 5)}),
    "halve": (["if x % 2 == 0:", "    x = x // 2"], "halve each even number", {}),
}
AGGS = {  # name: (code setting answer from result, statement phrase)
    "sum": (["answer = 0", "for x in result:", "    answer += x"], "the sum of {nums}"),
    "count": (["answer = len(result)"], "the count of {nums}"),
    "max": (["answer = 0", "if result:", "    answer = result[0]", "    for x in result:", "        if x > answer:",
             "            answer = x"], "the largest of {nums}"),
    "min": (["answer = 0", "if result:", "    answer = result[0]", "    for x in result:", "        if x < answer:",
             "            answer = x"], "the smallest of {nums}"),
    "list": ([], "{nums} in their original order"),
}
FMTS = {  # name: (code printing the answer, statement sentence, -----Output----- text)
    "number": (["print(answer)"], "Print {what}.", "One integer."),
    "yesno": (["if answer >= {t}:", "    print('YES')", "else:", "    print('NO')"],
              "Print YES if {what} is at least {t}, otherwise NO.", "YES or NO."),
    "sign": (["if answer > 0:", "    print('POSITIVE')", "elif answer < 0:", "    print('NEGATIVE')", "else:", "    print('ZERO')"],
             "Print POSITIVE if {what} is above zero, NEGATIVE if it is below zero and ZERO if it is zero.",
             "POSITIVE, NEGATIVE or ZERO."),
    "joined": (["if result:", "    print(' '.join(map(str, result)))", "else:", "    print('EMPTY')"],
               "Print {what}, separated by spaces, or EMPTY if there are none.", "The numbers on one line, or EMPTY."),
}
PLACEHOLDERS = {"k": 0, "d": 3, "lo": -1, "hi": 1, "t": 0}  # constants for counting split points
CONTRADICTIONS = {("even", "odd"), ("above", "below"), ("even", "halve"), ("odd", "halve")}


def combinations() -> list[tuple]:
    """Every valid (shape, steps, agg, fmt) with 1 to 9 split points; steps keep STEPS' order."""
    step_lists = [()] + [(s,) for s in STEPS] + [p for p in itertools.combinations(STEPS, 2) if p not in CONTRADICTIONS]
    combos = []
    for shape, steps, agg, fmt in itertools.product(SHAPES, step_lists, AGGS, FMTS):
        if (agg == "list") != (fmt == "joined"):
            continue
        if 1 <= len(split_points(solution(shape, steps, agg, fmt, PLACEHOLDERS))) <= 9:
            combos.append((shape, steps, agg, fmt))
    return combos


def name(combo: tuple) -> str:
    shape, steps, agg, fmt = combo
    return "/".join([shape, "+".join(steps) or "none", agg, fmt])


def held_out(combo: tuple) -> bool:
    """The split rule: a fixed fifth of the combinations, by a checksum of the name."""
    return zlib.crc32(name(combo).encode()) % 5 == 0


def parts(combo: tuple) -> set:
    shape, steps, agg, fmt = combo
    return {("shape", shape), ("agg", agg), ("fmt", fmt)} | {("step", s) for s in steps}


def solution(shape: str, steps: tuple, agg: str, fmt: str, consts: dict) -> str:
    lines = list(SHAPES[shape][0])
    if steps:
        lines += ["result = []", "for x in nums:"]
        for step in steps:
            lines += ["    " + line for line in STEPS[step][0]]
        lines.append("    result.append(x)")
    else:
        lines.append("result = nums")
    lines += AGGS[agg][0] + FMTS[fmt][0]
    return "\n".join(line.format(**consts) for line in lines) + "\n"


def statement(shape: str, steps: tuple, agg: str, fmt: str, consts: dict, example: tuple) -> str:
    nums = "the numbers left" if steps else "the numbers"
    text = f"You are given {SHAPES[shape][1]}."
    if steps:
        phrases = [STEPS[step][1].format(**consts) for step in steps]
        text += " Go through the numbers in order and " + ", then ".join(phrases) + "."
    what = AGGS[agg][1].format(nums=nums)
    text += " " + FMTS[fmt][1].format(what=what, **consts)
    if agg in ("max", "min"):
        text += f" If there are no numbers{' left' if steps else ''}, {what} is 0."
    return (f"{text}\n\n-----Input-----\n\n{SHAPES[shape][2]}\n\n-----Output-----\n\n{FMTS[fmt][2]}\n\n"
            f"-----Example-----\nInput\n{example[0]}\nOutput\n{example[1]}")


def stdin_text(shape: str, nums: list, rng: random.Random) -> str:
    if shape == "count":
        return f"{len(nums)}\n{' '.join(map(str, nums))}\n"
    if shape == "lines":
        return "".join(f"{x}\n" for x in [len(nums)] + nums)
    if shape == "words":
        return " ".join("".join(rng.choice("abcdefgh") for _ in range(x)) for x in nums) + "\n"
    return " ".join(map(str, nums)) + "\n"


def run(code: str, stdin: str) -> str:
    """The canonical solution's standard output on `stdin` (in this process: it is our own code)."""
    out = io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out):
            exec(code, {"__name__": "__main__"})
    finally:
        sys.stdin = old_stdin
    return out.getvalue()


def make_problem(combo: tuple, problem_id: int, rng: random.Random) -> dict:
    shape, steps, agg, fmt = combo
    for attempt in range(5):  # redraw while every test expects the same output (a constant program would pass)
        consts = {"t": rng.randint(0, 4)}
        for step in steps:
            consts.update({key: rng.randint(*bounds) for key, bounds in STEPS[step][2].items()})
        code = solution(shape, steps, agg, fmt, consts)
        low = 1 if shape == "words" else -9
        draw = lambda size: [rng.randint(low, 9) for _ in range(size)]
        lists = [draw(rng.randint(4, 6)), [], draw(1), draw(rng.randint(2, 8)), draw(rng.randint(2, 8))]
        lists.append(draw(5) if shape == "words" else [-rng.randint(1, 9) for _ in range(4)])
        inputs = [stdin_text(shape, nums, rng) for nums in lists]
        outputs = [run(code, stdin) for stdin in inputs]
        if len(set(outputs)) > 1:
            break
    conditionals = len(split_points(code))
    difficulty = "introductory" if conditionals <= 3 else "interview" if conditionals <= 6 else "competition"
    return {"problem_id": problem_id, "difficulty": difficulty, "fn_name": None,
            "question": statement(shape, steps, agg, fmt, consts, (inputs[0], outputs[0])),
            "starter_code": "", "canonical_solution": code, "inputs": inputs, "outputs": outputs,
            "family_parts": name(combo)}


def spread(pool: list, size: int, rng: random.Random) -> list:
    """`size` combinations drawn at random, as evenly as the pool allows over the number of split points."""
    groups = {}
    for combo in pool:
        groups.setdefault(len(split_points(solution(*combo, PLACEHOLDERS))), []).append(combo)
    for group in groups.values():
        rng.shuffle(group)
    interleaved = [c for row in itertools.zip_longest(*groups.values()) for c in row if c is not None]
    return interleaved[:size]


def generate(seed: int = 0, n_train: int = 160, n_test: int = 40) -> tuple[list, list]:
    """(train, test) records; raises ValueError if a split has fewer combinations than asked for."""
    combos = combinations()
    pools = [[c for c in combos if not held_out(c)], [c for c in combos if held_out(c)]]
    for pool, wanted, split in zip(pools, (n_train, n_test), ("train", "test")):
        if not 1 <= wanted <= len(pool):
            raise ValueError(f"--n-{split} must be between 1 and {len(pool)} (the {split} combinations), got {wanted}")
    rng = random.Random(seed)
    chosen_train = spread(pools[0], n_train, rng)
    seen = set().union(*(parts(c) for c in chosen_train))
    chosen_test = spread([c for c in pools[1] if parts(c) <= seen], n_test, rng)  # each part occurs in training
    train = [make_problem(c, 5000 + i, rng) for i, c in enumerate(chosen_train)]
    test = [make_problem(c, 6000 + i, rng) for i, c in enumerate(chosen_test)]
    return train, test


def histogram(problems: list) -> str:
    counts = [len(split_points(p["canonical_solution"])) for p in problems]
    return "\n".join(f"  E={e}  {counts.count(e):4d} {'#' * counts.count(e)}" for e in sorted(set(counts)))


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # bad input: one line, exit 2
        self.exit(2, f"error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description="Write a generated family of stdin problems (train.json, test.json).")
    ap.add_argument("--out", required=True, help="directory for train.json and test.json")
    ap.add_argument("--seed", type=int, default=0, help="picks the combinations and constants (default 0)")
    ap.add_argument("--n-train", type=int, default=160, help="training problems (default 160)")
    ap.add_argument("--n-test", type=int, default=40, help="held-out problems asked for (default 40)")
    ap.add_argument("--overwrite", action="store_true", help="replace existing train.json / test.json")
    args = ap.parse_args(argv)
    out = Path(args.out)
    files = [out / "train.json", out / "test.json"]
    existing = [str(f) for f in files if f.exists()]
    if existing and not args.overwrite:
        ap.error(f"{' and '.join(existing)} already there; pass --overwrite to replace")
    if out.exists() and not out.is_dir():
        ap.error(f"--out {out} is not a directory")
    try:
        train, test = generate(args.seed, args.n_train, args.n_test)
    except ValueError as e:
        ap.error(str(e))
    out.mkdir(parents=True, exist_ok=True)
    for path, records in zip(files, (train, test)):
        path.write_text(json.dumps(records, indent=1) + "\n")
    print(f"seed {args.seed}: {len(train)} train problems -> {files[0]}, {len(test)} held-out -> {files[1]} "
          f"({len(combinations())} combinations in all)")
    print("conditional statements E per canonical solution (train + held-out), problems:")
    print(histogram(train + test))
    return 0


if __name__ == "__main__":
    sys.exit(main())
