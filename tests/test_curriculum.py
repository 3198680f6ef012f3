"""curriculum.py: split points, CCCS stages (docs/METHOD.md, section 3), the schedule, the loader (docs/METHOD.md, section 1), prompts, CLI."""
import json
import math
import signal
import subprocess
import sys
from fractions import Fraction

import pytest

import curriculum
from conftest import ROOT
from support import display
from curriculum import (ALPHA, RHO_T, Curriculum, DataError, Problem, build_prompt, load_problems, main, split_points,
                        stage_prefixes)


def chain(e: int) -> str:
    """`x = 0` then e flat `if`s, each two lines: conditional statement k (0-based) is on line 2 + 2k."""
    return "x = 0\n" + "".join(f"if x == {k}:\n    x += 1\n" for k in range(e)) + "print(x)\n"


def first_lines(code: str, n: int) -> str:
    return "".join(code.splitlines(keepends=True)[:n])


# ---------------------------------------------------------------- split points

NESTED_ELIF = """\
n = int(input())
s = 0
for i in range(n):
    if i % 2:
        s += i
    elif i % 3:
        s -= 1
    else:
        s += 0 if i else 1
while s > 100:
    s //= 2
print(s)
"""


def test_split_points_nested_and_elif_lines():
    assert split_points(NESTED_ELIF) == [3, 4, 6, 10]  # for, if, elif, while; not else, not the ternary


def test_elif_chain_and_if_inside_else():
    code = "if a:\n    pass\nelif b:\n    pass\nelif c:\n    pass\nelse:\n    if d:\n        pass\n"
    assert split_points(code) == [1, 3, 5, 8]


def test_comprehensions_ternaries_and_other_blocks_are_not_split_points():
    code = ("ys = [y for y in xs if y > 0]\n"            # 1 comprehension for/if
            "z = {k: v for k, v in d.items() if v}\n"     # 2
            "w = a if b else c\n"                          # 3 conditional expression
            "f = lambda q: q if q else 0\n"                # 4
            "t = any(x for x in ys if x)\n"                # 5 generator
            "try:\n    pass\nexcept E:\n    pass\n"        # 6-9
            "with open(p) as fh:\n    pass\n"              # 10-11
            "while w:\n    w -= 1\nelse:\n    pass\n"      # 12-15: the while only
            "for i in ys:\n    pass\nelse:\n    pass\n")   # 16-19: the for only
    assert split_points(code) == [12, 16]


def test_async_for_and_functions_and_methods():
    code = ("class Solution:\n"                    # 1
            "    def f(self, xs):\n"               # 2
            "        for x in xs:\n"               # 3
            "            if x:\n"                  # 4
            "                return x\n"           # 5
            "async def g(it):\n"                   # 6
            "    async for v in it:\n"             # 7
            "        while v:\n"                   # 8
            "            v -= 1\n")                # 9
    assert split_points(code) == [3, 4, 7, 8]


def test_multiline_condition_counts_its_first_line():
    code = "x = 1\nif (x and\n        x > 0):\n    for i in range(\n            3):\n        pass\n"
    assert split_points(code) == [2, 4]


# ---------------------------------------------------------------- stages, hand-worked

def test_e0_is_one_plain_stage():
    assert stage_prefixes("print(input())\n") == [""]


def test_e1_one_completion_stage():
    # E=1: K=1, S=1; stage 1 cuts before point 0 (line 2).
    assert stage_prefixes(chain(1)) == ["x = 0\n", ""]


def test_e2():
    # E=2: K=ceil(sqrt 2)=2, S=ceil(2/2)=1; stage 2 before point 1 (line 4), stage 1 before point 0 (line 2).
    code = chain(2)
    assert stage_prefixes(code) == ["x = 0\nif x == 0:\n    x += 1\n", "x = 0\n", ""]


def test_e4():
    # E=4: K=2, S=2; stage 2 before point 2 (line 6), stage 1 before point 0 (line 2).
    code = chain(4)
    assert stage_prefixes(code) == [first_lines(code, 5), first_lines(code, 1), ""]
    assert stage_prefixes(NESTED_ELIF) == [first_lines(NESTED_ELIF, 5), first_lines(NESTED_ELIF, 2), ""]


def test_e9():
    # E=9: K=3, S=3; stages 3, 2, 1 cut before points 6, 3, 0 = lines 14, 8, 2.
    code = chain(9)
    assert stage_prefixes(code) == [first_lines(code, 13), first_lines(code, 7), first_lines(code, 1), ""]


def test_e17():
    # E=17: K=ceil(4.12)=5, S=ceil(17/5)=4; stages 5..1 cut before points 16, 12, 8, 4, 0 = lines 34, 26, 18, 10, 2.
    code = chain(17)
    assert stage_prefixes(code) == [first_lines(code, n) for n in (33, 25, 17, 9, 1)] + [""]


def test_first_line_conditional_gets_no_stage_with_an_empty_prefix():
    # stage 1 would be the lines above line 1: nothing, the same task as stage 0 (curriculum.py, departure 'no completion stage without code')
    assert stage_prefixes("for _ in range(int(input())):\n    print(1)\n") == [""]
    assert stage_prefixes("\n# read\nfor _ in range(int(input())):\n    print(1)\n") == [""]  # blank lines, comments
    code = "for _ in range(int(input())):\n    n = int(input())\n    if n:\n        print(n)\n"
    assert stage_prefixes(code) == [first_lines(code, 2), ""]  # E = 2: K = 2, S = 1: stage 2 cuts at line 3
    code = "for t in range(3):\n    a = t\n    if a:\n        b = 1\n    while b:\n        b -= 1\n    if a:\n        pass\n"
    assert stage_prefixes(code) == [first_lines(code, 4), ""]  # E = 4: K = 2, S = 2: points 0 and 2


@pytest.mark.parametrize("e", range(0, 60))
def test_stage_count_is_k_plus_1_and_prefixes_shrink(e):
    code = chain(e)
    pre = stage_prefixes(code)
    assert len(pre) == (math.ceil(math.sqrt(e)) + 1 if e else 1)
    assert pre[-1] == ""
    for a, b in zip(pre, pre[1:]):
        assert len(a) > len(b) and a.startswith(b)  # each stage strictly easier than the next
    for p in pre:
        assert code.startswith(p) and (p == "" or p.endswith("\n"))


def test_prefix_lines_follow_ast_line_numbers_not_str_splitlines():
    code = 's = "a\u2028b\x0cc"\nif s:\n    pass\n'     # str.splitlines would see 3 lines before the if
    assert split_points(code) == [2] and stage_prefixes(code) == ['s = "a\u2028b\x0cc"\n', ""]


def test_prefix_keeps_crlf_and_ends_on_fresh_line():
    code = "a = 1\r\nif a:\r\n    pass\r\n"
    assert stage_prefixes(code) == ["a = 1\r\n", ""]


# ---------------------------------------------------------------- the schedule

def problem(pid, code=None, fn_name=None, difficulty="interview"):
    return Problem(pid, "q", code or chain(4), fn_name, ["1\n"], ["1\n"], "", difficulty)


def test_starts_at_stage_k_with_that_prefix():
    cur = Curriculum([problem(1, chain(9)), problem("b", chain(0))])
    assert (cur.stage(1), cur.stage("b")) == (3, 0)
    assert cur.prefix(1) == stage_prefixes(chain(9))[0]
    assert cur.prefix("b") == ""


def test_moves_one_stage_exactly_when_rho_passes_rho_t_and_resets():
    cur = Curriculum([problem(1)], alpha=0.5, rho_t=0.75)      # E=4: stages 2, 1, 0
    assert cur.update(1, True) is False and cur.rho[1] == 0.5
    assert cur.update(1, True) is False and cur.rho[1] == 0.75   # equal is not above
    assert cur.stage(1) == 2
    assert cur.update(1, True) is True                           # 0.875 > 0.75
    assert (cur.stage(1), cur.rho[1]) == (1, 0.0)
    assert cur.prefix(1) == stage_prefixes(chain(4))[1]
    cur.update(1, False)
    assert cur.rho[1] == 0.0 and cur.stage(1) == 1


def test_never_moves_past_stage_0():
    cur = Curriculum([problem(1, chain(17))], alpha=0.9, rho_t=0.5)   # K=5: one pass moves one stage
    moves = [cur.update(1, True) for _ in range(10)]
    assert moves == [True] * 5 + [False] * 5
    assert cur.stage(1) == 0 and cur.prefix(1) == ""


def test_default_alpha_rho_t_need_three_straight_passes():
    cur = Curriculum([problem(1)])
    assert (cur.alpha, cur.rho_t) == (ALPHA, RHO_T)
    assert [cur.update(1, True) for _ in range(3)] == [False, False, True]
    assert [cur.update(1, ok) for ok in (True, False, True, True)] == [False, False, False, True]


def test_stale_rollout_from_an_earlier_stage_is_ignored():
    cur = Curriculum([problem(1)], alpha=0.9, rho_t=0.5)
    assert cur.update(1, True, stage=2) is True
    assert cur.update(1, True, stage=2) is False                 # generated at stage 2, problem now at 1
    assert (cur.stage(1), cur.rho[1]) == (1, 0.0)


def test_disabled_puts_everything_at_stage_0_and_keeps_it_there():
    cur = Curriculum([problem(1, chain(9)), problem(2, chain(1))], enabled=False)
    assert [cur.stage(1), cur.stage(2), cur.prefix(1), cur.prefix(2)] == [0, 0, "", ""]
    cur.update(1, True)
    assert cur.stage(1) == 0 and cur.stage_histogram() == {0: 2}


def test_stage_histogram_counts_problems_per_stage():
    cur = Curriculum([problem(1, chain(9)), problem(2, chain(9)), problem(3, chain(2)), problem(4, chain(0))],
                     alpha=0.9, rho_t=0.5)
    cur.update(2, True)
    assert cur.stage_histogram() == {0: 1, 2: 2, 3: 1}


def test_state_round_trips_through_json():
    probs = [problem(1, chain(9)), problem("x7", chain(4)), problem(3, chain(2))]
    cur = Curriculum(probs, alpha=0.4, rho_t=0.7)
    for pid, ok in [(1, True), (1, True), (1, True), ("x7", True), (3, False)] + [("x7", True)] * 5:
        cur.update(pid, ok)  # x7 (K = 2): 3 passes move it one stage, 3 more to stage 0
    fresh = Curriculum(probs)
    fresh.load_state_dict(json.loads(json.dumps(cur.state_dict())))
    assert (fresh.stages, fresh.rho, fresh.alpha, fresh.rho_t) == (cur.stages, cur.rho, 0.4, 0.7)
    assert fresh.reached == cur.reached == {"x7": "threshold"}
    assert fresh.stage(1) == 2 and fresh.prefix(1) == cur.prefix(1)


def test_load_state_dict_rejects_unknown_problem():
    cur = Curriculum([problem(1)])
    state = cur.state_dict()
    state["problems"].append([99, 0, 0.0])
    with pytest.raises(ValueError, match="99"):
        Curriculum([problem(1)]).load_state_dict(state)



# ---------------------------------------------------------------- the schedule and the passes over the data

def test_the_ceiling_falls_with_the_step_and_reaches_0_at_the_set_fraction():
    # chain(16): K = 4 completion stages; chain(1): K = 1. 20 steps, the last quarter (5 steps) plain.
    cur = Curriculum([problem(1, chain(16)), problem(2, chain(1))], plain_fraction=0.25)
    assert curriculum.plain_from(20, 0.25) == 16 and curriculum.plain_from(30, 0.25) == 23  # ceil(7.5) = 8 plain
    seen = []
    for step in range(1, 21):
        cur.follow_schedule(step, 20)
        seen.append((cur.stage(1), cur.stage(2)))
    assert seen[0] == (4, 1)                                    # step 1: the ceiling is every problem's K
    assert all(a >= b for a, b in zip(seen, seen[1:]))          # stages only fall
    assert seen[14] != (0, 0) and set(seen[15:]) == {(0, 0)}    # plain generation from step 16 on, not before
    assert [s for s, _ in seen[:15]] == [math.ceil(4 * (16 - t) / 15) for t in range(1, 16)]  # linear
    assert cur.reached == {1: "schedule", 2: "schedule"}


def test_a_problem_the_policy_solves_moves_before_the_ceiling_forces_it():
    cur = Curriculum([problem(1, chain(16))], alpha=0.9, rho_t=0.5, plain_fraction=0.25)
    cur.follow_schedule(1, 100)
    for _ in range(4):
        cur.update(1, True)
    assert cur.stage(1) == 0 and cur.reached == {1: "threshold"}
    cur.follow_schedule(2, 100)
    assert cur.stage(1) == 0 and cur.reached == {1: "threshold"}


def test_a_run_trained_further_stays_at_plain_generation():
    cur = Curriculum([problem(1, chain(9))], plain_fraction=0.25)
    cur.follow_schedule(10, 10)
    assert cur.stage(1) == 0
    cur.follow_schedule(11, 40)  # --resume --steps 40: the ceiling of step 11 of 40 is 3, the stage stays 0
    assert cur.stage(1) == 0


def test_no_cccs_and_no_schedule_leave_the_stages_alone():
    off = Curriculum([problem(1, chain(9))], enabled=False)
    no_schedule = Curriculum([problem(1, chain(9))], plain_fraction=0.0)
    for step in range(1, 11):
        off.follow_schedule(step, 10)
        no_schedule.follow_schedule(step, 10)
    assert off.stage(1) == 0 and off.reached == {} and no_schedule.stage(1) == 3


def test_each_pass_visits_every_problem_once_and_a_step_never_twice():
    import random
    cur = Curriculum([problem(i, chain(i % 5)) for i in range(10)])
    rng = random.Random(0)
    steps = [cur.draw(4, rng) for _ in range(10)]  # 40 draws: 4 passes of 10
    flat = [pid for step in steps for pid in step]
    assert all(sorted(flat[k:k + 10]) == list(range(10)) for k in range(0, 40, 10))
    assert all(len(set(step)) == 4 for step in steps)  # a pass that begins mid-step repeats none of the step
    assert flat[:10] != flat[10:20]  # each pass in a new order
    again = Curriculum([problem(i, chain(i % 5)) for i in range(10)])
    again.load_state_dict(json.loads(json.dumps(cur.state_dict())))
    rng_again = random.Random()
    rng_again.setstate(rng.getstate())
    assert [again.draw(4, rng_again) for _ in range(5)] == [cur.draw(4, rng) for _ in range(5)]  # resumes exactly


def test_the_budget_line_counts_as_by_hand():
    line = display.budget(66, 30, 16, 2, True, 0.25)
    # 30 x 16 x 2 = 960 rollouts; 30 x 16 / 66 = 7.27 visits, 14.5 rollouts per problem; ceil(30/4) = 8 plain steps
    assert "66 problems" in line and "= 960 rollouts" in line and "visited 7.3 times (14.5 rollouts)" in line
    assert "from step 23 (the last 8 steps)" in line
    assert "160 PPO steps x 8 problems x 4 samples = 5120 rollouts" in display.budget(7413, 160, 8, 4, True, 0.25)
    assert "visited 0.2 times" in display.budget(7413, 160, 8, 4, True, 0.25)
    assert "plain generation throughout" in display.budget(66, 30, 16, 2, False, 0.25)

# ---------------------------------------------------------------- the loader

GOOD = [
    {"problem_id": 1, "question": "Print n squared.", "canonical_solution": "n = int(input())\nprint(n * n)\n",
     "fn_name": None, "inputs": ["2\n", "0\n"], "outputs": ["4\n", "0\n"], "starter_code": "",
     "difficulty": "introductory"},
    {"problem_id": "two", "prompt": "Add.", "canonical_solution": "def add(a, b):\n    return a + b\n",
     "fn_name": "add", "inputs": [[1, 2], [0, 0]], "outputs": [3, 0], "starter_code": "def add(a, b):",
     "difficulty": "competition"},
]


def write(tmp_path, records, name="p.json", jsonl=False):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in records) if jsonl else json.dumps(records, indent=1))
    return path


def test_reads_json_list_and_json_lines_alike(tmp_path):
    a = load_problems(write(tmp_path, GOOD))
    b = load_problems(write(tmp_path, GOOD, "p.jsonl", jsonl=True))
    assert a == b and [p.problem_id for p in a] == [1, "two"]
    assert a[1].question == "Add." and a[1].fn_name == "add"
    assert a[0].tests == {"inputs": ["2\n", "0\n"], "outputs": ["4\n", "0\n"], "fn_name": None}


def test_description_alias(tmp_path):
    rec = {**GOOD[0], "description": "Desc."}
    del rec["question"]
    assert load_problems(write(tmp_path, [rec]))[0].question == "Desc."


def test_reads_original_apps_layout(tmp_path):
    apps = [
        {"problem_id": 10, "question": "Q", "difficulty": "interview", "starter_code": "",
         "solutions": json.dumps(["print 'py2'", "print(input())\n"]),       # first one is Python 2
         "input_output": json.dumps({"inputs": [["a", "b"], "c\n"], "outputs": ["a\nb\n", ["c"]]})},
        {"problem_id": 11, "question": "Q2", "difficulty": "introductory", "starter_code": "def f(x):",
         "solutions": json.dumps(["def f(x):\n    return [x]\n"]),
         "input_output": json.dumps({"fn_name": "f", "inputs": [[1]], "outputs": [[[1]]]})},
    ]
    stdin, call = load_problems(write(tmp_path, apps, jsonl=True))
    assert stdin.canonical_solution == "print(input())\n" and stdin.fn_name is None
    assert stdin.inputs == ["a\nb", "c\n"] and stdin.outputs == ["a\nb\n", "c"]  # lines joined
    assert (call.fn_name, call.inputs, call.outputs, call.starter_code) == ("f", [[1]], [[[1]]], "def f(x):")


def broken(**change):
    rec = {**GOOD[1], **change}
    return [GOOD[0], {k: v for k, v in rec.items() if v is not DROP}]


DROP = object()


@pytest.mark.parametrize("change, field", [
    (dict(problem_id=DROP), "problem_id"),
    (dict(problem_id=True), "problem_id"),
    (dict(problem_id=1), "problem_id"),                        # duplicate of record 0
    (dict(prompt=DROP), "question"),
    (dict(prompt="  "), "prompt"),
    (dict(canonical_solution=DROP), "canonical_solution"),
    (dict(canonical_solution=""), "canonical_solution"),
    (dict(canonical_solution="def add(a, b) return"), "canonical_solution"),
    (dict(canonical_solution=["x"]), "canonical_solution"),
    (dict(fn_name=""), "fn_name"),
    (dict(inputs=DROP), "inputs"),
    (dict(inputs="[[1, 2]]"), "inputs"),
    (dict(inputs=[], outputs=[]), "inputs"),
    (dict(outputs=[3]), "outputs"),                            # 1 output for 2 inputs
    (dict(inputs=[1, 2]), "inputs"),                           # call-based args must be a list
    (dict(fn_name=None, inputs=["1\n", 2], outputs=["1\n", "2\n"]), "inputs"),
    (dict(fn_name=None, inputs=["1\n", "2\n"], outputs=["1\n", 2]), "outputs"),
    (dict(starter_code=5), "starter_code"),
    (dict(difficulty="hard"), "difficulty"),
    (dict(difficulty=DROP), "difficulty"),
    (dict(input_output="{not json", inputs=DROP, solutions="[]"), "input_output"),
])
def test_rejects_broken_record_naming_file_index_and_field(tmp_path, change, field):
    path = write(tmp_path, broken(**change))
    with pytest.raises(DataError) as err:
        load_problems(path)
    msg = str(err.value)
    assert str(path) in msg and "record 1" in msg and f"'{field}'" in msg, msg


def test_rejects_record_that_is_not_an_object(tmp_path):
    with pytest.raises(DataError, match=r"p\.json: record 1: expected a JSON object"):
        load_problems(write(tmp_path, [GOOD[0], [1, 2]]))


@pytest.mark.parametrize("text, what", [
    ("[{", "not valid JSON"), ('{"a": 1}\n{oops\n', "line 2"), ("[]", "non-empty"), ("", "non-empty"),
    ('{"a": 1}', "field"),
])
def test_rejects_broken_files(tmp_path, text, what):
    path = tmp_path / "f.json"
    path.write_text(text)
    with pytest.raises(DataError, match=what) as err:
        load_problems(path)
    assert str(path) in str(err.value)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        load_problems(tmp_path / "absent.json")


def test_skip_missing_solutions_skips_with_a_printed_count(tmp_path, capsys):
    path = write(tmp_path, broken(canonical_solution=DROP) + [{**GOOD[0], "problem_id": 3, "canonical_solution": ""}])
    assert [p.problem_id for p in load_problems(path, skip_missing_solutions=True)] == [1]
    assert "skipped 2 of 3 records" in capsys.readouterr().err


# ---------------------------------------------------------------- prompts

class ChatTokenizer:
    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        self.seen = (messages, add_generation_prompt, tokenize)
        return f"<user>{messages[0]['content']}</user><assistant>"


def test_plain_prompt_stdin(tmp_path):
    p = load_problems(write(tmp_path, GOOD))[0]
    text = build_prompt(p)
    assert text.startswith("write an algorithm in python:\nPrint n squared.\n")
    assert text.endswith("\n### Python solution:\n") and "function" not in text


def test_plain_prompt_call_based_names_function_and_starter_code(tmp_path):
    text = build_prompt(load_problems(write(tmp_path, GOOD))[1], tokenizer=object())   # no chat template -> plain
    assert "`add`" in text and "```python\ndef add(a, b):\n```" in text and text.endswith("### Python solution:\n")


def test_chat_prompt_wraps_instruction_and_opens_code_block(tmp_path):
    tok, p = ChatTokenizer(), load_problems(write(tmp_path, GOOD))[1]
    text = build_prompt(p, tok)
    messages, gen, tokenize = tok.seen
    assert gen is True and tokenize is False and len(messages) == 1 and messages[0]["role"] == "user"
    assert messages[0]["content"].startswith("write an algorithm in python:\nAdd.") and "`add`" in messages[0]["content"]
    assert text.endswith("</user><assistant>```python\n")


# ---------------------------------------------------------------- command line

def test_cli_marks_split_points_and_stage_boundaries(tmp_path, capsys):
    rec = {**GOOD[0], "canonical_solution": NESTED_ELIF}
    assert main(["--data", str(write(tmp_path, [rec])), "--id", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    boundary = [i for i, line in enumerate(lines) if "---- stage" in line]
    assert [lines[i].split()[2] for i in boundary] == ["1:", "2:"]
    assert [lines[i + 1].split()[:2] for i in boundary] == [["3", "[0]"], ["6", "[2]"]]  # stage starts at its point
    assert "==== stage 2: prefix of 5 lines ====" in lines and "==== stage 0: prefix of 0 lines ====" in lines



def test_cli_shows_the_schedules_ceiling_over_a_run(tmp_path, capsys):
    rec = {**GOOD[0], "canonical_solution": NESTED_ELIF}  # K = 2: ceiling 2, 1, 0 over 20 steps, plain from 16
    assert main(["--data", str(write(tmp_path, [rec])), "--id", "1", "--steps", "20"]) == 0
    out = capsys.readouterr().out
    assert "ceiling 2: steps 1-8\n  ceiling 1: steps 9-15\n  ceiling 0: steps 16-20" in out

def test_cli_stats(tmp_path, capsys):
    assert main(["--data", str(write(tmp_path, GOOD)), "--stats"]) == 0
    out = capsys.readouterr().out
    assert "2 problems: introductory 1, interview 0, competition 1" in out and "stdin 1, call-based 1" in out


@pytest.mark.parametrize("args", [["--data", "{tmp}/absent.json"], ["--data", "{tmp}/p.json", "--id", "42"],
                                  ["--data", "{tmp}/bad.json"]])
def test_cli_errors_are_one_line_exit_2(tmp_path, args):
    write(tmp_path, GOOD)
    write(tmp_path, broken(difficulty="hard"), "bad.json")
    args = [a.format(tmp=tmp_path) for a in args]
    run = subprocess.run([sys.executable, str(ROOT / "curriculum.py"), *args], capture_output=True, text=True)
    assert run.returncode == 2 and run.stdout == ""
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr, run.stderr


@pytest.mark.parametrize("command", [["curriculum.py", "--id", "1013"],
                                     ["sandbox.py", "{tmp}/x.py", "--data", "data/train.json", "--id", "1013"]])
def test_cli_ends_quietly_when_its_reader_is_gone(tmp_path, command):  # as `| head` leaves it
    (tmp_path / "x.py").write_text("print(input())\n")
    args = [str(ROOT / command[0])] + [a.format(tmp=tmp_path) for a in command[1:]]
    run = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run.stdout.close()  # before it writes anything
    assert run.stderr.read() == b"" and run.wait() == -signal.SIGPIPE


def test_cli_id_missing_from_the_default_file_names_the_bundled_file_that_has_it(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the file is named relative to the current directory
    assert main(["--id", "1003"]) == 2  # data/test.json's, not data/train.json's
    err = capsys.readouterr().err
    assert err.startswith("error: no problem with id '1003' in ") and err.count("\n") == 1
    assert "ids 1000 to 2042" in err and err.rstrip().endswith("it is in data/test.json: --data data/test.json")


@pytest.mark.parametrize("records,ids", [(GOOD[:1], "1 problem, ids 1 to 1"), (GOOD, "2 problems, ids 1, two")])
def test_cli_id_missing_says_which_ids_the_file_has(tmp_path, capsys, records, ids):
    assert main(["--data", str(write(tmp_path, records)), "--id", "42"]) == 2
    assert capsys.readouterr().err.rstrip().endswith(f"p.json ({ids})")


@pytest.mark.parametrize("module", ["curriculum", "support.problems"])
def test_does_not_import_torch_or_transformers(module):
    code = f"import {module}, sys; print('torch' in sys.modules or 'transformers' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"


def test_the_schedule_arithmetic_is_exact():
    # the last ceil(f * steps) steps are plain, f as written (hundredths): integers only in the reference
    for steps in range(1, 1001):
        for hundredths in range(1, 100):
            plain_steps = -(-hundredths * steps // 100)
            assert curriculum.plain_from(steps, hundredths / 100) == steps - plain_steps + 1, (steps, hundredths)
    assert curriculum.plain_from(25, 0.28) == 19  # 0.28 * 25 = 7.000000000000001 as floats
    assert curriculum.plain_from(30, 0.25) == 23 and curriculum.plain_from(60, 0.25) == 46  # tiny, the demo
    for k in range(1, 8):  # the ceiling: ceil(k (first - step) / (first - 1)), against Fraction
        for first in range(2, 60):
            for step in range(1, first):
                assert curriculum.stage_ceiling(k, step, first) == math.ceil(Fraction(k * (first - step), first - 1))


def test_the_budget_line_of_a_resumed_run_says_what_its_curriculum_will_do():
    # a finished 30-step run trained to 60: every problem at stage 0 already (not "from step 46")
    line = display.budget(66, 60, 16, 2, True, 0.25, start=30, all_plain=True)
    assert "30 PPO steps (steps 31-60) x 16 problems x 2 samples = 960 rollouts" in line
    assert line.endswith("every problem at plain generation already")
    assert display.budget(66, 60, 16, 2, True, 0.25, start=10).endswith("from step 46 (the last 15 steps)")
    assert display.budget(66, 12, 16, 2, True, 0.25, start=10).endswith("from step 11 (the last 2 steps)")
    # a checkpoint from before the schedule: its curriculum has none, whatever the flag says
    assert display.budget(66, 60, 16, 2, True, 0.0, start=10).endswith("threshold alone (no schedule)")
