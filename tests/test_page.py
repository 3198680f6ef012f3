"""The rollouts page (support/page.py), from rollouts built by hand (no model): it holds FGO's masked tokens and
the executed lines of a rollout whose mask and coverage the test knows, a resumed run's page has each step once,
an interrupted write leaves the previous page whole, and the page's own random draw leaves the training's alone.
A tiny CLI run writes it: tests/test_stepcoder.py (the smoke test) and tests/test_runs.py (resume)."""
import json
import random
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest
import torch

import curriculum
from sandbox import ExecResult, TestResult
from support import page
from support.config import Config
from conftest import write_problems

VOID = {"meta", "br", "img", "hr", "input", "link", "col", "wbr"}


class Page(HTMLParser):
    """The page's tags (balanced?), its code lines (number, classes, text) and its masked tokens (line, text)."""

    def __init__(self, text: str):
        super().__init__()
        self.open, self.unbalanced, self.lines, self.masked, self.newlines = [], [], [], [], []
        self.line, self.in_masked = None, False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        classes = (dict(attrs).get("class") or "").split()
        if tag not in VOID:
            self.open.append((tag, classes))
        if tag == "div" and "ln" in classes:
            self.line = {"classes": set(classes), "number": None, "text": ""}
            self.lines.append(self.line)
        if tag == "span" and "masked" in classes and self.line is not None:  # (the legend has one too)
            self.in_masked = True
            self.masked.append([len(self.lines), ""])
        if tag == "span" and "newline" in classes and self.line is not None:
            self.newlines.append(len(self.lines))

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.open or self.open[-1][0] != tag:
            self.unbalanced.append(tag)
            return
        _, classes = self.open.pop()
        if tag == "span" and "masked" in classes:
            self.in_masked = False
        if tag == "div" and "ln" in classes:
            self.line = None

    def handle_data(self, data):
        if self.line is not None and self.line["number"] is None and self.open[-1][1] == ["no"]:
            self.line["number"] = int(data)
        elif self.line is not None and self.open[-1][1] != ["newline"] and "text" in {c for _, cs in self.open for c in cs}:
            self.line["text"] += data
        if self.in_masked:
            self.masked[-1][1] += data

    @property
    def balanced(self) -> bool:
        return not self.open and not self.unbalanced


# The program the test knows: the prefix of problem 0's stage 1 (its first line), then 7 generated tokens.
PREFIX = "n = int(input())"
PIECES = ["\nif", " n > 100:", "\n", "    print(0)", "\n    # big", "\nprint(n)", ""]  # "": EOS, always kept
KEPT = [1, 1, 1, 0, 0, 1, 1]  # fgo_mask's: "\n" ends line 2 (ran); line 3 never ran; line 4 is a comment
EXECUTED = frozenset({1, 2, 5})  # lines: 1 prefix, 2 "if n > 100:", 3 "    print(0)", 4 "    # big", 5 "print(n)"


def known_result() -> ExecResult:
    details = [TestResult("pass", 0.01, "1\n"), TestResult("wrong_answer", 0.01, "-7\n"), TestResult("pass", 0.01, "5\n")]
    return ExecResult("wrong_answer", 2, 3, -0.3, EXECUTED, details, coverage_complete=True)


def step_data(problems, rewards: list[float]):
    """A step's rollouts as stepcoder.Rollouts holds them, each the known program, with the given rewards."""
    n = len(rewards)
    ends = [sum(len(p) for p in PIECES[:k + 1]) for k in range(len(PIECES))]
    rollouts = SimpleNamespace(problems=[problems[0]] * n, stages=[1] * n, prefixes=[PREFIX] * n,
                               texts=["".join(PIECES)] * n, token_ends=[ends] * n, programs=[PREFIX + "".join(PIECES)] * n)
    results = [ExecResult(**{**known_result().__dict__, "reward": reward}) for reward in rewards]
    b_fgo = torch.tensor([KEPT + [0.0, 0.0]] * n)  # (N, G): two padding columns after the actions
    return rollouts, results, b_fgo


@pytest.fixture
def setup(tmp_path):
    problems = curriculum.load_problems(write_problems(tmp_path / "p.json"))
    cccs = curriculum.Curriculum(problems)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"model": "tiny", "steps": 4}))
    return problems, cccs, run_dir


def record(run_dir, problems, cccs, step: int, rewards=(-0.3,), **settings):
    cfg = Config(**{"steps": 4, "page_every": 1, "page_rollouts": 4, "seed": 0, **settings})
    page.record_step(run_dir, step, *step_data(problems, list(rewards)), cccs, cfg)


def test_the_page_holds_the_masked_tokens_and_executed_lines_it_was_given(setup):
    # fails if a masked token is shown kept (or a kept one masked), a line's coverage is wrong, the prefix is not
    # set apart, the first failing test is missing, or the page needs anything from elsewhere
    problems, cccs, run_dir = setup
    record(run_dir, problems, cccs, 1, rewards=(-0.3,))
    text = (run_dir / "rollouts.html").read_text()
    parsed = Page(text)
    assert parsed.balanced and text.rstrip().endswith("</html>")
    assert [line["number"] for line in parsed.lines] == [1, 2, 3, 4, 5]
    coverage = [{"ran", "never", "blank"} & line["classes"] for line in parsed.lines]
    assert coverage == [{"ran"}, {"ran"}, {"never"}, {"blank"}, {"ran"}]
    assert ["prompt" in line["classes"] for line in parsed.lines] == [True, False, False, False, False]
    assert [line["text"] for line in parsed.lines] == [PREFIX, "if n > 100:", "    print(0)", "    # big", "print(n)"]
    assert parsed.masked == [[3, "    print(0)"], [4, "    # big"]]  # (line, text): the masked tokens, nothing else
    assert parsed.newlines == [3]  # the masked token "\n    # big" holds line 3's line break
    assert "first failing test: test 2 (wrong_answer)" in text and "-7" in text  # its actual output
    assert "FGO kept 5 of 7 generated tokens" in text and "stage 1" in text
    for outside in ("<script", "src=", "url(", "@import"):
        assert outside not in text
    assert text.count('href="') == text.count('href="#')  # links within the page only


def test_a_resumed_run_has_each_step_once(setup):
    # the run was interrupted after step 4 was logged, with its checkpoint at step 2: the resumed run redoes 3 and 4
    problems, cccs, run_dir = setup
    for step in (1, 2, 3, 4):
        record(run_dir, problems, cccs, step)
    page.keep_page_until(run_dir, 2)
    assert [row["step"] for row in page.read_rows(run_dir)] == [1, 2]
    for step in (3, 4):
        record(run_dir, problems, cccs, step)
    assert [row["step"] for row in page.read_rows(run_dir)] == [1, 2, 3, 4]
    text = (run_dir / "rollouts.html").read_text()
    assert [text.count(f"<summary>step {step} of 4:") for step in (1, 2, 3, 4)] == [1, 1, 1, 1]


def test_an_interrupted_write_leaves_the_previous_page_whole(setup, monkeypatch):
    problems, cccs, run_dir = setup
    record(run_dir, problems, cccs, 1, rewards=(-0.3, 1.0))
    before = (run_dir / "rollouts.html").read_text()
    real_render = page.render_rollout
    calls = []
    def interrupted(*args):
        calls.append(1)
        if len(calls) == 3:  # step 2's page: step 1's two rollouts written, then Ctrl-C
            raise KeyboardInterrupt
        return real_render(*args)
    monkeypatch.setattr(page, "render_rollout", interrupted)
    with pytest.raises(KeyboardInterrupt):
        record(run_dir, problems, cccs, 2, rewards=(-0.3, 1.0))
    after = (run_dir / "rollouts.html").read_text()
    assert Page(after).balanced and after.rstrip().endswith("</html>")
    assert after == before and not (run_dir / "rollouts.html.tmp").exists()


def test_the_page_picks_the_best_the_worst_and_others_with_its_own_random_numbers(setup):
    # fails if the pick draws from the training's RNGs (a run with the page would train otherwise than one without)
    # or is not the same for the same step (a resumed run would show other rollouts)
    problems, cccs, run_dir = setup
    rewards = [-0.3, 1.0, -1.0, -0.6, 1.0, -0.3, -1.0, -0.3]
    chosen = page.chosen_rows(rewards, 4, 0, 7)
    assert chosen[:2] == [(1, "best"), (2, "worst")] and len(chosen) == 4
    assert {row for row, _ in chosen[2:]} <= {0, 3, 4, 5, 6, 7} and len({row for row, _ in chosen}) == 4
    assert page.chosen_rows(rewards, 4, 0, 7) == chosen and page.chosen_rows(rewards, 0, 0, 7) == []
    python_state, torch_state = random.getstate(), torch.get_rng_state()
    record(run_dir, problems, cccs, 1, rewards=rewards)
    assert random.getstate() == python_state and torch.equal(torch.get_rng_state(), torch_state)
    assert [r["why"] for r in page.read_rows(run_dir)[0]["rollouts"]] == ["best", "worst", "at random", "at random"]
    record(run_dir, problems, cccs, 2, rewards=rewards, page_every=5)  # not logged: neither 1, 5-th nor last
    record(run_dir, problems, cccs, 4, rewards=rewards, page_every=5)  # the last
    assert [row["step"] for row in page.read_rows(run_dir)] == [1, 4]


def test_the_page_shows_each_problems_stage_and_its_pass_rate_before_and_after(setup):
    problems, cccs, run_dir = setup
    report = {"train": {"overall": {"pass@1": 0.25, "greedy": 0.25, "n": 12, "ci95": {"pass@1": [0.1, 0.4]}},
                        "problems": {str(p.problem_id): {"pass@1": 0.0, "greedy": 0.0, "passed": 0} for p in problems}}}
    (run_dir / "eval_step0.json").write_text(json.dumps(report))
    report["train"]["problems"]["0"]["pass@1"] = 0.75
    report["train"]["overall"]["pass@1"] = 0.5
    (run_dir / "eval_step4.json").write_text(json.dumps(report))
    record(run_dir, problems, cccs, 1)
    cccs.stages[0] = 0
    record(run_dir, problems, cccs, 4)
    text = (run_dir / "rollouts.html").read_text()
    assert Page(text).balanced
    row = text[text.index('<tr><td class="id">0</td>'):].split("</tr>")[0]
    assert [cell.split(">")[-1] for cell in row.split("</td>")[2:4]] == ["1", "0"]  # stage 1 at step 1, 0 at step 4
    assert row.endswith('<td>0.00</td><td>0.75</td><td class="up">+0.75</td>')
    assert "train 0.250 [0.100, 0.400] &rarr; 0.500" in text
