"""The rollouts page: RUN/rollouts.html, one self-contained file (inline CSS, no script, nothing fetched) that a
class opens in a browser to see the method's two ideas work on the run's own rollouts. Plumbing of stepcoder.py,
not the method.

    python3 -m support.page runs/tiny       # write runs/tiny/rollouts.html again (from rollouts.jsonl and eval_step*.json)

What it shows (docs/WALKTHROUGH.md, section 9): for each logged PPO step (step 1, every --page-every-th, the last)
a few of its scored rollouts, each with its problem, its CCCS stage and the schedule's ceiling (Sec. 3.2), the
canonical prefix set apart from the generated code, each generated token kept or masked by FGO (Sec. 3.3), each
line run or not by the unit tests, the verdict, the reward (Eq. 3) and the first failing test's input, expected
and actual output. On top: every problem's stage over the logged steps, beside its pass@1 at plain generation
before and after RL (eval_step0.json and the last eval_step<N>.json).

How: `record_step` (ppo_loop, beside --show-rollouts) appends the step's chosen rollouts to RUN/rollouts.jsonl as
plain data, one JSON line a step, and rewrites the page from those lines and the evaluations (`write_page`);
the end of the run rewrites it once more, after the last evaluation.

Choices, and why:
1. Which rollouts: --page-rollouts a step (default 4): the best, the worst and the rest at random, drawn by a
   random.Random of the page's own seeded with --seed and the step, so the training's random numbers are
   untouched (a run with the page trains exactly as one without it) and a resumed run shows the rows a
   straight run would.
2. Rank 0's rollouts: under torchrun each rank scores its share of the step; the page shows the share of
   the rank that writes the run directory, so "best" and "worst" are of that share.
3. Written whole, to a temporary file renamed over the page: a run interrupted while writing it leaves the
   previous page, valid HTML. A resumed run first drops the lines of steps after its checkpoint
   (`keep_page_until`, as metrics.jsonl), so that each step appears once.
4. Stages after the step: the table holds each problem's stage after the logged step's curriculum update,
   as metrics.jsonl's stage_hist; a rollout's own stage is the one its prompt was built at.
"""
from __future__ import annotations

import html
import json
import random
import sys
from pathlib import Path

import curriculum
from support import display
from support.runs import metrics_lines, write_atomically

PAGE, ROWS = "rollouts.html", "rollouts.jsonl"
STAGE_COLOURS = ["#cdebc5", "#fbe7a6", "#f8c77f", "#f19f72", "#e0735f", "#c4504a"]  # stage 0, 1, ... (last: higher)

# ------------------------------------------------------------------ what a step records ---

def logged(step: int, steps: int, every: int) -> bool:
    """The steps the page shows: the first, every `every`-th, and the run's last."""
    return step == 1 or step % every == 0 or step == steps


def chosen_rows(rewards: list[float], count: int, seed: int, step: int) -> list[tuple[int, str]]:
    """The rollouts of a step the page shows, as (row, why): the best (the first of the highest reward), the worst
    (the first of the lowest among the others), then count - 2 of the rest at random, in row order. The random
    draw is the page's own (random.Random seeded with the run's seed and the step): no other RNG moves."""
    if count <= 0 or not rewards:
        return []
    rows = range(len(rewards))
    best = max(rows, key=rewards.__getitem__)
    chosen = [(best, "best")]
    others = [i for i in rows if i != best]
    if count >= 2 and others:
        chosen.append((min(others, key=rewards.__getitem__), "worst"))
    rest = [i for i in others if i not in {row for row, _ in chosen}]
    picker = random.Random(f"rollouts page, seed {seed}, step {step}")
    drawn = picker.sample(rest, min(count - len(chosen), len(rest)))
    return chosen + [(i, "at random") for i in sorted(drawn)]


def rollout_record(problem, stage: int, ceiling: int | None, prefix: str, pieces: list[str], kept: list[float],
                   result, why: str, program: str | None = None) -> dict:
    """One rollout as plain data: the problem, its stage and the schedule's ceiling (None: no schedule), the
    canonical prefix, the generated tokens' text with FGO's kept (1) / masked (0) flag, the lines of the program
    the sandbox ran (`program`, default: prefix + tokens; a chat model's last token may hold the closing fence),
    and the sandbox's verdict, reward, executed lines and first failing test (support/display.py: first_failure, cut)."""
    failure = display.first_failure(result, problem.tests)
    if failure is not None:
        failure = {key: display.cut(value) if isinstance(value, str) else value for key, value in failure.items()}
        traceback = result.details[failure["test"] - 1].stderr
        if failure["verdict"] in ("runtime_error", "timeout") and traceback and traceback != failure["actual"]:
            failure["stderr"] = traceback[-display.SHOWN:]
    return {"why": why, "problem_id": problem.problem_id, "difficulty": problem.difficulty, "stage": stage,
            "ceiling": ceiling, "prefix": prefix, "pieces": pieces, "kept": [int(k) for k in kept],
            "program_lines": len((prefix + "".join(pieces) if program is None else program).splitlines()),
            "status": result.status, "reward": result.reward, "passed": result.passed, "total": result.total,
            "executed_lines": sorted(result.executed_lines), "coverage_complete": result.coverage_complete,
            "error": result.error[-display.SHOWN:], "first_failure": failure}


def record_step(run_dir: Path, step: int, rollouts, results: list, b_fgo, cccs, cfg) -> None:
    """A logged step (`logged`): its chosen rollouts (stepcoder.Rollouts rows, their sandbox results and FGO mask)
    and every problem's stage as one line of RUN/rollouts.jsonl, then the page again. Off with --page-rollouts 0."""
    if cfg.page_rollouts == 0 or not logged(step, cfg.steps, cfg.page_every):
        return
    scheduled = cccs.enabled and cccs.plain_fraction > 0
    first_plain = curriculum.plain_from(cfg.steps, cccs.plain_fraction) if scheduled else None
    shown = []
    for i, why in chosen_rows([result.reward for result in results], cfg.page_rollouts, cfg.seed, step):
        problem, ends = rollouts.problems[i], rollouts.token_ends[i]
        pieces = [rollouts.texts[i][start:end] for start, end in zip([0] + ends[:-1], ends)]
        completion_stages = len(cccs.prefixes[problem.problem_id]) - 1
        ceiling = curriculum.stage_ceiling(completion_stages, step, first_plain) if scheduled else None
        shown.append(rollout_record(problem, rollouts.stages[i], ceiling, rollouts.prefixes[i], pieces,
                                    b_fgo[i, :len(ends)].tolist(), results[i], why, rollouts.programs[i]))
    line = {"step": step, "steps": cfg.steps, "first_plain": first_plain, "cccs": cccs.enabled, "fgo": cfg.fgo,
            "scored": len(results), "stages": {str(problem_id): stage for problem_id, stage in cccs.stages.items()},
            "completion_stages": {str(problem_id): len(prefixes) - 1 for problem_id, prefixes in cccs.prefixes.items()},
            "rollouts": shown}
    with open(run_dir / ROWS, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
    write_page(run_dir)


def read_rows(run_dir: Path) -> list[dict]:
    """RUN/rollouts.jsonl's steps; a last line cut short by an interruption is left out (as metrics.jsonl's)."""
    return [row for _, row in metrics_lines(run_dir / ROWS, quiet=True)]


def keep_page_until(run_dir: Path, step: int) -> None:
    """A resumed run goes on from its checkpoint's step: the page's steps after it (an interrupted run's last
    ones, which the run does again) are dropped first, so that no step appears twice."""
    if not (run_dir / ROWS).exists():
        return
    kept = [row for row in read_rows(run_dir) if row["step"] <= step]
    write_atomically(run_dir / ROWS, "".join(json.dumps(row) + "\n" for row in kept))  # whole, or as it was
    write_page(run_dir)

# ----------------------------------------------------------------------------- the page ---

def write_page(run_dir: Path) -> Path | None:
    """RUN/rollouts.html from RUN/rollouts.jsonl and the evaluations, written to a temporary file and renamed:
    an interrupted write leaves the previous page whole. None, and nothing written, without rollouts.jsonl
    (--page-rollouts 0, or no step logged yet)."""
    if not (run_dir / ROWS).exists():
        return None
    final, temporary = run_dir / PAGE, run_dir / (PAGE + ".tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as f:
            f.writelines(page_parts(run_dir))
        temporary.replace(final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return final


CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1150px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
.muted { color: #666; } .legend span.sample { padding: 0 .3em; border-radius: 3px; }
.tables { display: flex; flex-wrap: wrap; gap: 0 1.5em; align-items: flex-start; }
table.stages { border-collapse: collapse; font-size: 12px; }
table.stages td, table.stages th { border: 1px solid #fff; padding: 1px 4px; text-align: center; }
table.stages th { background: #eee; font-weight: 600; } table.stages td.id { text-align: left; background: #f6f6f6; }
.up { color: #16803c; font-weight: 600; } .down { color: #b42318; font-weight: 600; }
details.step { margin: .8em 0; border: 1px solid #ddd; border-radius: 6px; padding: .3em .8em; }
details.step > summary { cursor: pointer; font-weight: 600; }
.rollout { margin: .9em 0 1.2em; }
.rollout .head { background: #f3f4f6; padding: .3em .6em; border-radius: 4px 4px 0 0; border: 1px solid #ddd; }
.why { font-weight: 700; } .verdict { padding: 0 .4em; border-radius: 3px; color: #fff; background: #b42318; }
.verdict.pass { background: #16803c; } .verdict.wrong_answer { background: #b54708; }
.code { font: 13px/1.4 ui-monospace, Menlo, Consolas, monospace; border: 1px solid #ddd; border-top: 0; }
.ln { display: flex; white-space: pre; } .ln .no { width: 3.2em; text-align: right; color: #999; padding-right: .5em; flex: none; }
.ln .cov { width: 6.4em; flex: none; font-size: 11px; padding-top: 1px; text-align: center; }
.ln.ran .cov { background: #cdebc5; color: #16803c; } .ln.never .cov { background: #fbd5d0; color: #b42318; }
.ln.never .text { background: #fff1ef; }
.ln .text { flex: 1; padding-left: .5em; }
.ln.prompt .text { background: #e8effa; } .prefix { color: #33506e; }
.masked { color: #8a8a8a; text-decoration: line-through; background: #ececec; border-right: 1px dotted #aaa; }
.newline { color: #777; background: #ececec; }
.failure { border: 1px solid #ddd; border-top: 0; padding: .3em .6em; background: #fffbf5; }
.failure table { border-collapse: collapse; } .failure th { text-align: left; vertical-align: top; padding-right: 1em; }
.failure pre { margin: 0; white-space: pre-wrap; font-size: 12px; max-height: 10em; overflow: auto; }
"""


def page_parts(run_dir: Path):
    """The page, piece by piece (write_page writes them as they come)."""
    rows = read_rows(run_dir)
    config_path = run_dir / "config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    yield ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
           f"<title>Rollouts of {esc(run_dir.name)}</title><style>{CSS}</style></head><body>\n")
    yield f"<h1>Rollouts of {esc(str(run_dir))}</h1>\n"
    settings = ", ".join(f"{key} {config[key]}" for key in ("model", "steps", "cccs", "fgo", "seed") if key in config)
    yield f'<p class="muted">{esc(settings)}. Written by stepcoder.py as the run goes (support/page.py).</p>\n'
    yield legend(rows)
    yield stages_and_evaluation(run_dir, rows)
    yield "<h2>The rollouts</h2>\n"
    if not rows:
        yield '<p class="muted">No step logged yet.</p>\n'
    else:
        yield ("<p>Steps: " + " &middot; ".join(f'<a href="#step-{row["step"]}">{row["step"]}</a>' for row in rows)
               + '<span class="muted"> (the first and the last are open; click a step to open it)</span></p>\n')
    for n, row in enumerate(rows):
        yield step_section(row, opened=n in (0, len(rows) - 1))
    yield "</body></html>\n"


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def legend(rows: list[dict]) -> str:
    shown = max((len(row["rollouts"]) for row in rows), default=0)
    which = "the best (highest reward), the worst, and the rest drawn at random"
    return (f'<p class="legend">Each logged step shows {shown or "a few"} of its rollouts: {which}, '
            "from the share of the rollouts that rank 0 scored. In the code: "
            '<span class="sample prefix" style="background:#e8effa">prompt lines</span> are the canonical prefix of '
            "the problem's CCCS stage (the prompt, never trained on); the rest the policy generated. "
            '<span class="sample masked">struck-through grey</span> tokens are masked by FGO (they are on lines '
            "no test ran, so the policy loss skips them; <span class=\"newline\">&#8629;</span> marks a masked line "
            "break); the other generated tokens are kept. Beside each line: "
            '<span class="sample" style="background:#cdebc5">ran</span> a unit test executed it, '
            '<span class="sample" style="background:#fbd5d0">never ran</span> no test did; blank: a blank or '
            "comment line, or nothing ran (a program that does not compile: FGO keeps all its tokens).</p>\n")


def evaluation_reports(run_dir: Path) -> tuple[dict, dict | None, str]:
    """(the first evaluation, the last one or None, their names), e.g. eval_step0.json and eval_step30.json."""
    paths = sorted(run_dir.glob("eval_step*.json"), key=lambda p: int(p.stem.removeprefix("eval_step")))
    if not paths:
        return {}, None, ""
    reports = [json.loads(p.read_text()) for p in (paths[0], paths[-1])]
    names = " -> ".join(p.stem.removeprefix("eval_") for p in dict.fromkeys((paths[0], paths[-1])))
    return reports[0], reports[1] if len(paths) > 1 else None, names


def rate(report: dict | None, split: str, problem_id: str) -> float | None:
    rates = (report or {}).get(split, {}).get("problems", {}).get(problem_id)
    return None if rates is None else rates.get("pass@1", rates.get("greedy"))


def change(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return "<td></td>"
    kind = "up" if after > before else "down" if after < before else "muted"
    return f'<td class="{kind}">{after - before:+.2f}</td>'


def number(value: float | None) -> str:
    return "&ndash;" if value is None else f"{value:.2f}"


def overall(report: dict | None, split: str) -> str:
    row = (report or {}).get(split, {}).get("overall")
    if not row:
        return "&ndash;"
    interval = row.get("ci95", {}).get("pass@1")
    return f"{row['pass@1']:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def stages_and_evaluation(run_dir: Path, rows: list[dict]) -> str:
    """Every problem's stage over the logged steps, beside its pass@1 at plain generation before and after RL."""
    before, after, names = evaluation_reports(run_dir)
    out = ["<h2>Every problem's stage over the steps, and its pass@1 before and after RL</h2>\n"]
    if before:
        splits = [split for split in before if (after or before).get(split)]
        out.append("<p>pass@1 at plain generation (stage 0, no canonical prefix: what RL is for), " + esc(names) + ": "
                   + "; ".join(f"{esc(split)} {overall(before, split)} &rarr; {overall(after, split)}" for split in splits)
                   + " (95% intervals over problems)."
                   + ("" if after else " The evaluation after RL is written at the end of the run.") + "</p>\n")
    if rows:
        last = rows[-1]
        first_plain = last.get("first_plain")
        schedule = (f"the schedule's ceiling brings every problem to stage 0 from step {first_plain}" if first_plain
                    else "no schedule" if last.get("cccs") else "CCCS off: every problem at stage 0")
        out.append(f'<p class="muted">Stage after each logged step (CCCS, Sec. 3.2: K completion stages, then 0 = '
                   f"plain generation; {schedule}). Colours: "
                   + " ".join(f'<span class="sample" style="{stage_style(s)}">'
                              f"&nbsp;{s}{'+' if s == len(STAGE_COLOURS) - 1 else ''}&nbsp;</span>"
                              for s in range(len(STAGE_COLOURS)))
                   + ". pass@1 per problem: its samples' pass rate at plain generation.</p>\n")
    problem_ids = list(rows[-1]["stages"]) if rows else list(before.get("train", {}).get("problems", {}))
    if not problem_ids:
        return "".join(out)
    steps = [row["step"] for row in rows]
    header = (f'<tr><th></th><th></th><th colspan="{len(steps)}">stage after step</th><th colspan="3">pass@1</th></tr>\n'
              "<tr><th>problem</th><th>K</th>" + "".join(f"<th>{step}</th>" for step in steps)
              + "<th>before</th><th>after</th><th>change</th></tr>\n")
    completion = rows[-1].get("completion_stages", {}) if rows else {}
    lines = []
    for problem_id in problem_ids:
        cells = []
        for row in rows:
            stage = row["stages"].get(problem_id)
            cells.append("<td></td>" if stage is None else f'<td style="{stage_style(stage)}">{stage}</td>')
        first, last = rate(before, "train", problem_id), rate(after, "train", problem_id)
        lines.append(f'<tr><td class="id">{esc(problem_id)}</td><td>{esc(completion.get(problem_id, ""))}</td>'
                     + "".join(cells) + f"<td>{number(first)}</td><td>{number(last)}</td>{change(first, last)}</tr>\n")
    out.append(side_by_side(header, lines, 230 + 24 * len(steps)))
    held_out = list(before.get("test", {}).get("problems", {}))
    if held_out:
        out.append(f"<details><summary>The {len(held_out)} held-out problems (--test-data, never trained on): pass@1 "
                   f"{overall(before, 'test')} &rarr; {overall(after, 'test')}</summary>\n")
        lines = []
        for problem_id in held_out:
            first, last = rate(before, "test", problem_id), rate(after, "test", problem_id)
            lines.append(f'<tr><td class="id">{esc(problem_id)}</td><td>{number(first)}</td><td>{number(last)}</td>'
                         f"{change(first, last)}</tr>\n")
        out.append(side_by_side("<tr><th>problem</th><th>before</th><th>after</th><th>change</th></tr>\n", lines, 230)
                   + "</details>\n")
    return "".join(out)


def stage_style(stage: int) -> str:
    colour = STAGE_COLOURS[min(stage, len(STAGE_COLOURS) - 1)]
    return f"background:{colour}" + ("; color:#fff" if stage >= 4 else "")


def side_by_side(header: str, lines: list[str], width: int) -> str:
    """Table rows as up to four tables side by side (each about `width` pixels wide), so that a long list of
    problems fits a screen."""
    tables = max(1, min(4, 1100 // width))
    per_table = -(-len(lines) // tables)
    parts = [f'<table class="stages">{header}{"".join(lines[i:i + per_table])}</table>'
             for i in range(0, len(lines), per_table)]
    return '<div class="tables">' + "\n".join(parts) + "</div>\n"


def step_section(row: dict, opened: bool) -> str:
    histogram = {}
    for stage in row["stages"].values():
        histogram[stage] = histogram.get(stage, 0) + 1
    stages = ", ".join(f"{count} at stage {stage}" for stage, count in sorted(histogram.items()))
    head = (f"step {row['step']} of {row['steps']}: {len(row['rollouts'])} of its {row['scored']} scored rollouts; "
            f"problems after it: {stages}")
    body = "".join(render_rollout(rollout, row) for rollout in row["rollouts"])
    return (f'<details class="step" id="step-{row["step"]}"{" open" if opened else ""}><summary>{esc(head)}</summary>\n'
            f"{body}</details>\n")


def code_lines(prefix: str, pieces: list[str], kept: list[int]) -> list[list[tuple[str, str]]]:
    """The program as lines of (text, kind) pieces: kind "prefix" (the canonical prefix), "kept" or "masked"
    (a generated token, by FGO's flag); a line break a masked token holds ends its line as ("", "newline")."""
    lines = [[]]
    for text, kind in [(prefix, "prefix")] + [(p, "kept" if k else "masked") for p, k in zip(pieces, kept)]:
        parts = text.split("\n")
        for n, part in enumerate(parts):
            if n > 0:
                if kind == "masked":
                    lines[-1].append(("", "newline"))
                lines.append([])
            if part:
                lines[-1].append((part, kind))
    return lines


def render_rollout(rollout: dict, row: dict) -> str:
    kept = rollout["kept"]
    ceiling = rollout["ceiling"]
    stage = f"stage {rollout['stage']}" + ("" if ceiling is None else f" (the schedule's ceiling: {ceiling})")
    if not row.get("cccs", True):
        stage = "stage 0 (CCCS off)"
    fgo = (f"FGO kept {sum(kept)} of {len(kept)} generated tokens" if row.get("fgo", True)
           else f"FGO off: all {len(kept)} generated tokens kept")
    status = rollout["status"]
    head = (f'<span class="why">{esc(rollout["why"])}</span> &middot; problem {esc(rollout["problem_id"])} '
            f'({esc(rollout["difficulty"])}) &middot; {esc(stage)} &middot; '
            f'<span class="verdict {esc(status)}">{esc(status)}</span> &middot; reward {rollout["reward"]:+.1f} &middot; '
            f'passed {rollout["passed"]} of {rollout["total"]} tests &middot; {esc(fgo)}')
    executed = set(rollout["executed_lines"])
    compiled = status != "compile_error"
    n_prefix = len(rollout["prefix"].splitlines())
    lines = []
    for line_number, pieces in enumerate(code_lines(rollout["prefix"], rollout["pieces"], kept), 1):
        source = "".join(text for text, _ in pieces)
        past = line_number > rollout.get("program_lines", line_number)  # after the program: not run
        blank = not compiled or past or source.strip()[:1] in ("", "#")
        coverage = "ran" if line_number in executed else "blank" if blank else "never"
        label = {"ran": "ran", "never": "never ran", "blank": ""}[coverage]
        text = "".join(f'<span class="newline">&#8629;</span>' if kind == "newline"
                       else f'<span class="{kind}">{esc(part)}</span>' if kind != "kept" else esc(part)
                       for part, kind in pieces)
        prompt = " prompt" if line_number <= n_prefix else ""
        lines.append(f'<div class="ln {coverage}{prompt}"><span class="no">{line_number}</span>'
                     f'<span class="cov">{label}</span><span class="text">{text}</span></div>')
    notes = []  # (HTML)
    if not compiled:
        notes.append(esc(f"does not compile: no line ran, and FGO keeps every token. {rollout['error']}"))
    elif not rollout["coverage_complete"]:
        notes.append("coverage incomplete (a line marked never ran may have run): FGO keeps every token")
    failure = rollout["first_failure"]
    if failure is not None:
        cells = "".join(f"<tr><th>{key}</th><td><pre>{esc(failure[key])}</pre></td></tr>"
                        for key in ("input", "expected", "actual", "stderr") if key in failure)
        notes.append(f"first failing test: test {failure['test']} ({esc(failure['verdict'])})<table>{cells}</table>")
    footer = "".join(f'<div class="failure">{note}</div>' for note in notes)
    return (f'<div class="rollout"><div class="head">{head}</div><div class="code">' + "\n".join(lines)
            + f"</div>{footer}</div>\n")


def main(argv: list[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(description="Write a StepCoder run's rollouts page (RUN/rollouts.html) again.")
    parser.add_argument("run_dir", help="a run directory, e.g. runs/tiny")
    run_dir = Path(parser.parse_args(argv).run_dir)
    if not (run_dir / "config.json").exists():
        print(f"support.page: error: {run_dir} is not a run directory (no config.json)", file=sys.stderr)
        return 2
    page = write_page(run_dir)
    if page is None:
        print(f"support.page: error: {run_dir} has no {ROWS}: a run with --page-rollouts 0, or before its first step",
              file=sys.stderr)
        return 2
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
