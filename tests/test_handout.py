"""The student handout (docs/handout.py, docs/ASSIGNMENTS.md 'For teachers'): a copy of the repository whose
exercise bodies raise NotImplementedError naming the exercise, without the answer key or the git history.
One handout is made per module; the graders run in it as a student runs them."""
import ast
import importlib.util
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import ROOT, write_problems

spec = importlib.util.spec_from_file_location("handout", ROOT / "docs" / "handout.py")
handout = importlib.util.module_from_spec(spec)
spec.loader.exec_module(handout)

GRADERS = {"compute_gae": "exercise 1: compute_gae", "policy_loss": "exercise 2: policy_loss",
           "value_loss": "exercise 3: value_loss", "fgo_mask": "exercise 4: fgo_mask",
           "kl_penalized_rewards": "exercise 5: kl_penalized_rewards", "split_points": "exercise 6: split_points",
           "stage_prefixes": "exercise 6: stage_prefixes", "curriculum_update": "exercise 7: Curriculum.update",
           "outputs_match": "exercise 8: outputs_match", "logprobs_and_values": "exercise 9: logprobs_and_values",
           "whiten": "exercise 10: whiten", "response_length": "exercise 11: response_length",
           "program_text": "exercise 11: program_text", "group_advantages": "exercise 12: group_advantages"}
FILES = {"compute_gae": "stepcoder.py", "policy_loss": "stepcoder.py", "value_loss": "stepcoder.py",
         "fgo_mask": "stepcoder.py", "kl_penalized_rewards": "stepcoder.py", "split_points": "curriculum.py",
         "stage_prefixes": "curriculum.py", "Curriculum.update": "curriculum.py", "outputs_match": "sandbox.py",
         "logprobs_and_values": "stepcoder.py", "whiten": "stepcoder.py", "response_length": "stepcoder.py",
         "program_text": "stepcoder.py"}


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    return handout.make_handout(tmp_path_factory.mktemp("handout") / "student")


def grade(directory: Path, tmp_path: Path) -> dict[str, str | None]:
    """Run the graders in `directory` as a student does; grader name -> failure message (None: passed)."""
    report = tmp_path / "graders.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_assignments.py", f"--junitxml={report}"],
                   cwd=directory, capture_output=True, text=True, timeout=300)
    results = {}
    for case in ET.parse(report).iter("testcase"):
        failure = case.find("failure")
        failure = case.find("error") if failure is None else failure
        results[case.get("name").removeprefix("test_grade_")] = None if failure is None else failure.get("message", "")
    return results


def reference_lines(name: str) -> list[str]:
    """The reference body's lines (after the docstring), stripped, from the repository's own file, read with ast
    here rather than through the tool under test; long enough to be an answer, not a common line."""
    source = (ROOT / FILES[name]).read_text()
    scope = ast.parse(source).body
    for part in name.split("."):
        node = next(n for n in scope if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == part)
        scope = node.body
    assert isinstance(scope[0], ast.Expr) and isinstance(scope[0].value, ast.Constant), f"{name} has a docstring"
    lines = source.splitlines()[scope[0].end_lineno:node.end_lineno]
    return [s for s in (line.strip() for line in lines) if len(s) >= 16 and s != "with torch.no_grad():"]


def test_the_handout_has_no_answer_key_and_no_history(made):
    files = {str(p.relative_to(made)) for p in made.rglob("*") if p.is_file()}
    assert not (made / ".git").exists(), "the handout must not carry the git history"
    assert not files & {"tests/test_grading.py", "tests/test_handout.py", "bench/exercise_signals.py"}
    tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.split())
    want = {name for name in tracked if (ROOT / name).is_file()} - {"tests/test_grading.py", "tests/test_handout.py",
                                                                     "bench/exercise_signals.py"}
    assert files == want, f"missing {sorted(want - files)}, extra {sorted(files - want)}"


def test_no_reference_body_is_in_the_handout(made):
    texts = {}
    for path in made.rglob("*"):
        if path.is_file():
            try:
                texts[path] = path.read_text()
            except UnicodeDecodeError:
                pass
    assert len(texts) > 30
    for name in FILES:
        lines = reference_lines(name)
        assert lines, f"no line of {name}'s body to search for"
        found = [(str(path.relative_to(made)), line) for line in lines for path, text in texts.items() if line in text]
        assert not found, f"{name}'s reference body is in the handout: {found}"


def test_every_grader_fails_in_a_fresh_handout_naming_its_exercise(made, tmp_path):
    results = grade(made, tmp_path)
    assert set(results) == set(GRADERS), f"graders run: {sorted(results)}"
    for name, message in results.items():
        assert message is not None, f"grader {name} passed in a fresh handout"
        assert "NotImplementedError" in message and GRADERS[name] in message, f"grader {name} failed with: {message}"


def test_pasting_the_reference_bodies_back_passes_every_grader(made, tmp_path):
    done = shutil.copytree(made, tmp_path / "done")
    handout.paste_bodies(ROOT, done)
    for file in sorted(set(FILES.values())):  # only the bodies were replaced: putting them back restores the file
        assert (done / file).read_text() == (ROOT / file).read_text(), file
    results = grade(done, tmp_path)
    assert set(results) == set(GRADERS) and not any(results.values()), f"failed: {results}"


def test_the_tool_refuses_a_non_empty_directory_or_one_inside_the_repository(made, tmp_path):
    assert handout.main([str(made)]) == 2
    assert handout.main([str(ROOT / "runs" / "handout-test")]) == 2
    assert not (ROOT / "runs" / "handout-test").exists()


def test_the_tiny_run_stops_with_the_exercises_message(made, tmp_path):
    data = write_problems(tmp_path / "probs.json")
    run = subprocess.run([sys.executable, "stepcoder.py", "--model", "tiny", "--data", str(data), "--test-data",
                          str(data), "--out", str(tmp_path / "run"), "--sft-steps", "2", "--steps", "1",
                          "--problems-per-step", "2", "--samples-per-problem", "2", "--max-new-tokens", "16",
                          "--no-eval"], cwd=made, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("stepcoder: exercise ") and "see docs/ASSIGNMENTS.md" in last, last


def test_a_class_is_graded_with_the_teachers_graders(made, tmp_path, capsys):
    fresh = shutil.copytree(made, tmp_path / "fresh")
    done = shutil.copytree(made, tmp_path / "done")
    handout.paste_bodies(ROOT, done)
    cheat = shutil.copytree(done, tmp_path / "cheat")  # whitens over the padding, and edited its grader to pass
    code = (cheat / "stepcoder.py").read_text()
    (cheat / "stepcoder.py").write_text(code.replace("var = masked_mean((x - mean) ** 2, mask)", "var = ((x - mean) ** 2).mean()"))
    grader = (cheat / "tests" / "grading.py").read_text()
    (cheat / "tests" / "grading.py").write_text(grader.replace("def check_whiten(whiten):\n", "def check_whiten(whiten):\n    return\n"))
    assert handout.main(["--grade", str(fresh), str(done), str(cheat)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"{fresh}: 0 of 12 exercises pass (failing: 1 compute_gae, 2 policy_loss"), lines[0]
    assert lines[1] == f"{done}: 12 of 12 exercises pass"
    assert lines[2] == f"{cheat}: 11 of 12 exercises pass (failing: 10 whiten)"
    assert lines[3] == "graded 3 copies: 1 with every exercise passing"
    assert handout.main(["--grade", str(tmp_path / "nobody")]) == 2
