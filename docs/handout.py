"""The student handout of docs/ASSIGNMENTS.md, in one command (run from the repository root):

    python3 docs/handout.py OUT

writes OUT, a copy of the repository's tracked files (`git ls-files`) in which the body of every
exercise function is `raise NotImplementedError("exercise N: <name> — see docs/ASSIGNMENTS.md")`
(signature and docstring kept, every other line as it is). Left out: the answer key
(tests/test_grading.py: the wrong answers, one bug away from the solution), this tool's test (it
reads the reference bodies), bench/exercise_signals.py (it runs the wrong answers) and the git
history. The graders run there as in the repository: `python3 -m pytest -q tests/test_assignments.py`.
Before it finishes, the tool checks that no non-trivial line of a reference body is left anywhere in
OUT (a document quoting one would give it away).

    python3 docs/handout.py --grade COPY [COPY ...]

grades a class: one line per student's copy of the handout, the exercises whose graders all pass. It runs
this repository's graders (tests/grading.py, tests/test_assignments.py, tests/conftest.py, pytest.ini),
not the copy's, on the copy's code: a student's edit to a grader does not change the grade.
"""
import argparse
import ast
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
# (exercise number, file, function; Class.method for a method), in the order of docs/ASSIGNMENTS.md
EXERCISES = [(1, "stepcoder.py", "compute_gae"), (2, "stepcoder.py", "policy_loss"), (3, "stepcoder.py", "value_loss"),
             (4, "stepcoder.py", "fgo_mask"), (5, "stepcoder.py", "kl_penalized_rewards"),
             (6, "curriculum.py", "split_points"), (6, "curriculum.py", "stage_prefixes"),
             (7, "curriculum.py", "Curriculum.update"), (8, "sandbox.py", "outputs_match"),
             (9, "stepcoder.py", "logprobs_and_values"), (10, "stepcoder.py", "whiten"),
             (11, "stepcoder.py", "response_length"), (11, "stepcoder.py", "program_text"),
             (12, "stepcoder.py", "group_advantages")]
# the answer key; the test that reads the reference; the measurement that uses the answer key's wrong answers
LEFT_OUT = {"tests/test_grading.py", "tests/test_handout.py", "bench/exercise_signals.py"}
MIN_CHARS = 16  # a body line this long (stripped) must not appear in the handout; shorter ones ('return False') may
COMMON = {"with torch.no_grad():"}  # long enough, but in many other files and no hint
GRADERS = ["tests/grading.py", "tests/test_assignments.py", "tests/conftest.py", "pytest.ini"]  # the teacher's


def message(number: int, name: str) -> str:
    return f"exercise {number}: {name} — see docs/ASSIGNMENTS.md"


def find(tree: ast.Module, name: str) -> ast.FunctionDef:
    scope = tree.body
    for part in name.split("."):
        node = next((n for n in scope if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == part), None)
        if node is None:
            raise LookupError(f"no {name} (at {part})")
        scope = node.body
    return node


def body_lines(source: str, name: str) -> tuple[int, int]:
    """0-based [start, end) of the function's body lines after its docstring (comments in it included)."""
    node = find(ast.parse(source), name)
    first = node.body[0]
    has_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
    start = first.end_lineno if has_doc else node.body[0].lineno - 1
    if has_doc and len(node.body) == 1:
        raise ValueError(f"{name} has no body after its docstring")
    return start, node.end_lineno


def body(source: str, name: str) -> str:
    start, end = body_lines(source, name)
    return "".join(source.splitlines(keepends=True)[start:end])


def replace_body(source: str, name: str, new_body: str) -> str:
    lines = source.splitlines(keepends=True)
    start, end = body_lines(source, name)
    return "".join(lines[:start]) + new_body + "".join(lines[end:])


def stub(source: str, number: int, name: str) -> str:
    indent = " " * find(ast.parse(source), name).body[-1].col_offset
    return f"{indent}raise NotImplementedError({message(number, name)!r})\n"


def strip_exercises(source: str, file: str) -> str:
    for number, f, name in EXERCISES:
        if f == file:
            source = replace_body(source, name, stub(source, number, name))
    return source


def paste_bodies(reference: Path, handout: Path) -> None:
    """Write the reference bodies back into a handout (what a student's finished handout holds)."""
    for _, file, name in EXERCISES:
        target = handout / file
        text = target.read_text()
        target.write_text(replace_body(text, name, body((reference / file).read_text(), name)))


def secret_lines(reference: Path = ROOT) -> dict[str, list[str]]:
    """Each exercise's non-trivial reference body lines, stripped: what must not be in a handout."""
    out = {}
    for _, file, name in EXERCISES:
        lines = [line.strip() for line in body((reference / file).read_text(), name).splitlines()]
        out[name] = [line for line in lines if len(line) >= MIN_CHARS and line not in COMMON]
    return out


def leaks(handout: Path, reference: Path = ROOT) -> list[str]:
    """'file: exercise: line' for every reference body line found in a handout file (as text)."""
    secrets = secret_lines(reference)
    found = []
    for path in sorted(p for p in handout.rglob("*") if p.is_file()):
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for name, lines in secrets.items():
            found += [f"{path.relative_to(handout)}: {name}: {line}" for line in lines if line in text]
    return found


def tracked(root: Path = ROOT) -> list[str]:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True, check=True)
    return [name for name in names.stdout.split("\0") if name]


def make_handout(out: Path, root: Path = ROOT) -> Path:
    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    if out == root or root in out.parents:
        raise ValueError(f"{out} is inside the repository: write the handout elsewhere")
    for name in tracked(root):
        if name in LEFT_OUT or not (root / name).is_file():
            continue
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, out / name)
    for file in sorted({file for _, file, _ in EXERCISES}):
        (out / file).write_text(strip_exercises((root / file).read_text(), file))
    found = leaks(out, root)
    if found:
        raise RuntimeError("reference body lines left in the handout:\n  " + "\n  ".join(found))
    return out


def grader_name(name: str) -> str:
    """The test of tests/test_assignments.py that grades an exercise function: test_grade_<this>."""
    return name.replace("Curriculum.", "curriculum_")


def grade_copy(copy: Path, root: Path = ROOT, timeout: float = 600) -> tuple[dict[str, bool], str]:
    """Run root's graders on a student's copy (in a scratch copy of it, with root's grader files put in).
    -> (exercise function -> passed, '' or why the graders did not run)"""
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch) / "copy"
        shutil.copytree(copy, work, ignore=shutil.ignore_patterns(".git", "runs", "__pycache__", ".pytest_cache"))
        for name in GRADERS:
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, work / name)
        report = Path(scratch) / "report.xml"
        try:
            subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_assignments.py",
                            f"--junitxml={report}"], cwd=work, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {}, f"the graders ran past {timeout:.0f} s"
        if not report.is_file():
            return {}, "the graders did not run"
        cases = {case.get("name"): case for case in ET.parse(report).iter("testcase")}
    passed = {}
    for _, _, name in EXERCISES:
        case = cases.get(f"test_grade_{grader_name(name)}")
        passed[name] = case is not None and case.find("failure") is None and case.find("error") is None \
            and case.find("skipped") is None
    return passed, "" if any(name.startswith("test_grade_") for name in cases) else "the graders could not load its code"


def grade_line(copy: Path, passed: dict[str, bool], problem: str) -> str:
    """'COPY: 10 of 12 exercises pass (failing: 9 logprobs_and_values, ...)': an exercise passes when all its
    functions' graders do."""
    numbers = sorted({number for number, _, _ in EXERCISES})
    failing = [f"{number} {name}" for number, _, name in EXERCISES if not passed.get(name)]
    done = [n for n in numbers if all(passed.get(name) for m, _, name in EXERCISES if m == n)]
    line = f"{copy}: {len(done)} of {len(numbers)} exercises pass"
    if problem:
        return f"{line} ({problem})"
    return f"{line} (failing: {', '.join(failing)})" if failing else line


def grade_class(copies: list[Path], root: Path = ROOT) -> int:
    """Print each copy's grade line; -> the number of copies in which every exercise passes."""
    missing = [str(copy) for copy in copies if not (copy / "stepcoder.py").is_file()]
    if missing:
        raise ValueError(f"not a copy of the handout (no stepcoder.py): {', '.join(missing)}")
    complete = 0
    for copy in tqdm(copies, desc="grading", unit="copy", leave=False):
        passed, problem = grade_copy(copy, root)
        tqdm.write(grade_line(copy, passed, problem))
        complete += not problem and all(passed.values())
    return complete


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the student handout of docs/ASSIGNMENTS.md, or grade a class's copies.")
    parser.add_argument("out", type=Path, nargs="?", help="the handout's directory (new or empty, outside the repository)")
    parser.add_argument("--grade", type=Path, nargs="+", metavar="COPY",
                        help="grade these copies of the handout with this repository's graders: one line each")
    args = parser.parse_args(argv)
    if (args.out is None) == (args.grade is None):
        print("handout: error: give the handout's directory (OUT) or --grade COPY ..., not both", file=sys.stderr)
        return 2
    try:
        if args.grade:
            complete = grade_class(args.grade)
            print(f"graded {len(args.grade)} copies: {complete} with every exercise passing")
            return 0
        out = make_handout(args.out)
    except (FileExistsError, ValueError, RuntimeError) as e:
        print(f"handout: error: {e}", file=sys.stderr)
        return 2
    print(f"handout: {out} ({len(EXERCISES)} functions to write; grade: cd {out} && "
          f"python3 -m pytest -q tests/test_assignments.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
