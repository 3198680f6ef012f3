"""Problem files (docs/METHOD.md, section 1): APPS+ or original APPS records, as a JSON list or JSON Lines -> Problem objects.

    load_problems("data/train.json")[0].tests    # {"inputs": [...], "outputs": [...], "fn_name": None}
    python curriculum.py --data my.jsonl --stats  # checks a file; a bad record: DataError naming file, record, field

Departures from the paper (StepCoder, Dou et al., 2024, trains on APPS+) and why:
1. APPS layout: the canonical solution is the first of `solutions` that parses as Python 3
   (APPS keeps some Python 2); list-valued stdin tests are joined by newlines, as in CodeRL.
"""
import ast
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DIFFICULTIES = ("introductory", "interview", "competition")


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

    @property
    def tests(self) -> dict:
        """The dict sandbox.run_tests takes."""
        return {"inputs": self.inputs, "outputs": self.outputs, "fn_name": self.fn_name}


def _parses(code: str) -> bool:
    try:
        return ast.parse(code) is not None
    except (SyntaxError, ValueError):
        return False


def _joined(x: Any) -> Any:  # APPS keeps some stdin tests as lists of lines; CodeRL joins them
    return "\n".join(x) if isinstance(x, list) and all(isinstance(s, str) for s in x) else x


def _record(rec: Any, where: str, skip_missing: bool) -> Problem | None:
    """One record (APPS+ or APPS layout) -> Problem; None if it has no canonical solution and skip_missing."""
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
    pid = rec.get("problem_id")
    check(isinstance(pid, (int, str)) and not isinstance(pid, bool) and pid != "", "problem_id",
          f"must be an int or a non-empty string, got {pid!r}")
    key = next((k for k in ("question", "prompt", "description") if k in rec), "question")
    question = rec.get(key)
    check(isinstance(question, str) and question.strip(), key, "missing or empty")
    if "inputs" not in rec and ("input_output" in rec or "solutions" in rec):  # original APPS
        tio, sols = json_field("input_output"), json_field("solutions")
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


def load_problems(path: str | Path, skip_missing_solutions: bool = False) -> list[Problem]:
    """Read a JSON list or JSON Lines file of APPS+ (or original APPS) records; see docs/METHOD.md, section 1."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
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
