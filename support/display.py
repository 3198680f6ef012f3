"""What `python curriculum.py` and `python sandbox.py` print, and the run's budget line: plumbing, not the method.
Each module's `main` parses its flags here, calls its module and prints what these functions return:
    python curriculum.py --id 1013 --steps 30    # show (stages, prompts), schedule; --stats: stats
    python sandbox.py PROGRAM.py --data data/train.json --id 3 --show-coverage   # sandbox_report, coverage
`first_failure` and `cut` also serve the rollouts page (support/page.py). No torch here (sandbox.py imports it).
"""
import argparse, json, math
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import curriculum
from support.containment import python_lines
from support.problems import DIFFICULTIES, Problem, load_problems, missing_id

SHOWN = 300  # characters of the first failing test's input, expected and actual output the command line shows

# ---------------------------------------------------------------- python curriculum.py, and the run's budget

def curriculum_arguments(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Show problems and their CCCS stages (StepCoder §3.2).")
    ap.add_argument("--data", default=str(Path(__file__).parents[1] / "data" / "train.json"),
                    help="a JSON list or JSON Lines file, or humaneval (default: the bundled data/train.json)")
    ap.add_argument("--id", help="show one problem: split points, stage boundaries, each stage's prompt")
    ap.add_argument("--stats", action="store_true", help="counts per difficulty, stdin/call-based, histogram of E")
    ap.add_argument("--steps", type=int, help="with --id: the schedule's ceiling over a run of this many PPO steps")
    return ap.parse_args(argv)


def show(problem: Problem) -> str:
    """The canonical solution with split points and stage boundaries marked, then every stage's prompt."""
    p, code = problem, problem.canonical_solution
    points, prefixes = curriculum.split_points(code), curriculum.stage_prefixes(code)
    K = len(prefixes) - 1
    starts = {len(curriculum._lines(pre)) + 1: K - k for k, pre in enumerate(prefixes[:-1])}  # first line the policy writes
    kind = f"call-based: {p.fn_name}" if p.fn_name else "assertion tests" if p.test_code is not None else "stdin"
    out = [f"problem {p.problem_id} ({p.difficulty}, {kind}): E={len(points)} conditional statements [i], "
           f"K={K} completion stages + stage 0 (plain generation)", ""]
    for n, line in enumerate(curriculum._lines(code), 1):
        if n in starts:
            out.append(f"     ---- stage {starts[n]}: the prompt holds the lines above; the policy writes the rest")
        out.append(f"{n:4d} {f'[{points.index(n)}]' if n in points else '':>5} {line.rstrip()}")
    out += ["", "==== prompt (every stage; the stage's prefix follows it) ====", curriculum.build_prompt(p).rstrip("\n")]
    for k, pre in enumerate(prefixes[:-1] + [curriculum.program_prefix(p, "")]):  # stage 0: a base model's
        out += [f"==== stage {K - k}: prefix of {len(curriculum._lines(pre))} lines ====", pre.rstrip("\n") or "(none)"]
    return "\n".join(out)


def schedule(problem: Problem, steps: int, plain_fraction: float = curriculum.PLAIN_FRACTION) -> str:
    """The steps of a run of `steps` PPO steps at which the schedule's ceiling holds each stage of the problem."""
    k = len(curriculum.stage_prefixes(problem.canonical_solution)) - 1
    first = curriculum.plain_from(steps, plain_fraction)
    out = [f"schedule of a {steps}-step run (--cccs-plain-fraction {plain_fraction}): every problem at stage 0 "
           f"from step {first}; the threshold may move this one sooner"]
    for c in range(k, -1, -1):
        held = [t for t in range(1, steps + 1) if curriculum.stage_ceiling(k, t, first) == c]
        if held:
            out.append(f"  ceiling {c}: steps {held[0]}-{held[-1]}")
    return "\n".join(out)


def stats(problems: list[Problem]) -> str:
    calls = sum(p.fn_name is not None for p in problems)
    asserts = sum(p.test_code is not None for p in problems)
    cls = sum("class Solution" in p.canonical_solution for p in problems)
    diff, tests = Counter(p.difficulty for p in problems), [len(p.inputs) for p in problems]
    out = [f"{len(problems)} problems: " + ", ".join(f"{d} {diff[d]}" for d in DIFFICULTIES),
           f"stdin {len(problems) - calls - asserts}, call-based {calls} ({cls} as class Solution methods), "
           f"assertion tests {asserts}",
           f"tests per problem: min {min(tests)}, max {max(tests)}",
           "E (conditional statements): stages K+1 (K with split point 0 on line 1), problems"]
    for e, n in sorted(Counter(len(curriculum.split_points(p.canonical_solution)) for p in problems).items()):
        out.append(f"  E={e:3d}  K+1={math.ceil(math.sqrt(e)) + 1:2d}  {n:4d} {'#' * n}")
    return "\n".join(out)


def budget(n_problems: int, steps: int, problems_per_step: int, samples_per_problem: int, cccs: bool,
           plain_fraction: float, start: int = 0, all_plain: bool = False) -> str:
    """The run's budget in one line: problems, rollouts, visits per problem, when plain generation starts. A
    resumed run's (`start`: its checkpoint's step; `cccs`, `plain_fraction`: its curriculum's; `all_plain`: every
    problem at stage 0 there) counts the steps left and says what its curriculum will do."""
    per_step = min(problems_per_step, n_problems)
    left = steps - start
    visits = left * per_step / n_problems
    line = (f"budget: {n_problems} problems, {left} PPO steps{f' (steps {start + 1}-{steps})' if start else ''} x "
            f"{per_step} problems x {samples_per_problem} samples = {left * per_step * samples_per_problem} rollouts; "
            f"each problem visited {visits:.1f} times ({visits * samples_per_problem:.1f} rollouts)")
    if not cccs:
        return line + "; CCCS off: plain generation throughout"
    if all_plain:
        return line + "; every problem at plain generation already"
    if plain_fraction == 0:
        return line + "; CCCS by the per-problem threshold alone (no schedule)"
    first = max(curriculum.plain_from(steps, plain_fraction), start + 1)  # (a checkpoint past it: the next step brings them)
    return line + f"; every problem at plain generation from step {first} (the last {steps - first + 1} steps)"

# ---------------------------------------------------------------- python sandbox.py

class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # bad input: one line, status 2
        self.exit(2, f"sandbox.py: error: {message}; usage: {self.usage}\n")


def sandbox_arguments(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    usage = "python sandbox.py PROGRAM.py --data FILE --id ID [--timeout S] [--json] [--show-coverage]"
    p = _ArgumentParser(description="Run a program on a problem's tests: verdict, reward, coverage.", usage=usage)
    p.add_argument("program", help="a Python file")
    p.add_argument("--data", required=True, help="problems file (read by curriculum.load_problems)")
    p.add_argument("--id", required=True, help="problem_id of the problem whose tests to run")
    p.add_argument("--timeout", type=float, default=4.0, help="seconds per test (default 4)")
    p.add_argument("--json", action="store_true", help="print the ExecResult as JSON")
    p.add_argument("--show-coverage", action="store_true", help="print the program, executed lines marked")
    return p, p.parse_args(argv)


def sandbox_inputs(args: argparse.Namespace) -> tuple[str, dict]:
    """The program's code, and problem --id's tests by the validated loader; OSError or ValueError if wrong."""
    with open(args.program, encoding="utf-8") as f:
        code = f.read()
    problems = {str(q.problem_id): q for q in load_problems(args.data)}
    if args.id not in problems:
        raise ValueError(missing_id(args.id, args.data, list(problems.values())))
    return code, problems[args.id].tests


def sandbox_report(code: str, tests: dict, result, as_json: bool, show_coverage: bool) -> str:
    """What `python sandbox.py` prints: the ExecResult as JSON, or (coverage,) each test, the first failing one."""
    failure = first_failure(result, tests)
    if as_json:
        cut_failure = None if failure is None else {k: cut(v) if isinstance(v, str) else v for k, v in failure.items()}
        return json.dumps({**asdict(result), "executed_lines": sorted(result.executed_lines),
                           "first_failure": cut_failure}, indent=1)
    out = [coverage(code, result)] if show_coverage else []
    for i, d in enumerate(result.details, 1):
        error = f"  {d.stderr[-200:].strip()}" if d.verdict == "runtime_error" else ""
        out.append(f"test {i}: {d.verdict:13} {d.seconds:.3f} s{error}")
    if failure is not None:
        out.append(f"first failing test: test {failure['test']} ({failure['verdict']})")
        show = str if tests["fn_name"] or "test_code" in tests else repr  # stdin: quoted, \n shown
        for key in ("input", "expected", "actual"):
            out.append(f"  {key + ':':9} {cut(failure[key], show)}")
    out.append(f"{result.status}: reward {result.reward:+.1f}, passed {result.passed}/{result.total} {result.error}")
    return "\n".join(out)


def coverage(code: str, result) -> str:
    """The program with each line marked: + ran, - never ran, blank: a blank or comment line. A program that
    does not compile ran nothing, and FGO keeps all its tokens (docs/METHOD.md, section 4)."""
    unmarked = result.status == "compile_error"
    out = ["coverage: + ran, - never ran, blank: a blank or comment line" + (" (or nothing ran)" if unmarked else "")]
    if unmarked:
        out.append("(the program does not compile: no line ran, and FGO keeps every token of it)")
    elif not result.coverage_complete:
        out.append("(coverage incomplete: a line marked - may have run; FGO keeps every token of this program)")
    for n, line in enumerate(python_lines(code), 1):  # numbered as Python numbers them, not by str.splitlines
        line = line.rstrip("\r\n")
        blank = unmarked or line.strip()[:1] in ("", "#")
        mark = "+" if n in result.executed_lines else " " if blank else "-"
        out.append(f"{n:4} {mark} | {line}")
    return "\n".join(out)


def first_failure(result, tests):
    """The first test that ran and did not pass: number, verdict, input, expected and actual output as text
    (call-based: as JSON; actual: the returned value; assertion tests: the test code, the traceback); None if none."""
    call = tests["fn_name"] is not None
    for i, d in enumerate(result.details):
        if d.verdict != "pass" and "test_code" in tests:
            return {"test": i + 1, "verdict": d.verdict, "input": tests["test_code"],
                    "expected": "every assertion holds", "actual": d.stderr}
        if d.verdict != "pass":
            inp, want = tests["inputs"][i], tests["outputs"][i]
            return {"test": i + 1, "verdict": d.verdict, "input": json.dumps(inp) if call else inp,
                    "expected": json.dumps(want) if call else want, "actual": d.returned if call else d.stdout}
    return None


def cut(text, show=str):
    """`text` shown by `show`, cut at SHOWN characters with "..." after."""
    return show(text) if len(text) <= SHOWN else show(text[:SHOWN]) + "..."
