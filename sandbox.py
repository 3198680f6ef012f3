"""The reward judge: run a program on its unit tests -> verdict, reward and executed lines.

    python sandbox.py PROGRAM.py --data data/train.json --id 3 [--json] [--show-coverage]  # exit 0: pass
    run_tests(code, {"inputs": ["1 2\\n"], "outputs": ["3\\n"], "fn_name": None}).reward  # 1.0
    run_tests("def f(x):\\n    return x", assertion_tests("assert f(2) == 2")).reward  # 1.0

Three kinds of tests: stdin (APPS: input -> expected output), call-based (APPS: fn_name, arguments -> value),
and assertion tests (HumanEval's check(candidate), MBPP's asserts): test code run after the program in its
namespace, one test: a failed assert of the test code is a wrong answer, any other exception (in the program, or
in the test code, such as a missing function) a runtime error. Only the program's lines are traced.

Implements StepCoder's (Dou et al. 2024) compiler feedback, the RL reward of §3.1, Eq. 3 (CodeRL's
setting, docs/METHOD.md section 2): +1 all tests pass, -0.3 wrong answer, -0.6 runtime error or timeout,
-1 compile error, the worst over the tests wins; and the line coverage FGO (§3.3, docs/METHOD.md section
4) masks the policy loss with: `executed_lines`, to be used only when `coverage_complete`. Outputs are
compared here; programs run in support/containment.py, whose docstring lists what is isolated and what
is not: a reward harness, not a jail for hostile code.

Departures from the paper / the APPS harness, and why:
1. Tests stop early: at the first runtime error or timeout (later tests cannot change status or
   reward): `passed` counts tests that ran and passed, `executed_lines` is the union over tests that ran.
2. Strict comparison, not APPS's: whitespace tokens; two integers exactly, however long; other numbers
   within 1e-6 absolute or relative; no lower-casing or set comparison (they pass wrong programs).
   Call-based: `==`, tuples as lists, floats within 1e-6, [value] for value. Assertion tests: the test code's own.
3. sandbox_error, a status outside Eq. 3: the sandbox itself failed (a worker died, an exception inside it),
   and did again when its jobs were run once more. Not the program's verdict, so no reward: NaN, and
   `coverage_complete` False; `error` says what went wrong. Callers leave such a result out (stepcoder.py
   leaves the rollout out of the loss, the curriculum and the evaluation's pass counts). Test data the
   sandbox cannot pass on (a lone surrogate in a string) is refused earlier, by support/problems.py.
"""
import decimal, json, math, re, sys
from dataclasses import dataclass, field
from support.containment import EXCERPT, compiled_tests, landlock_abi, run_programs  # noqa: F401 (landlock_abi: for callers)

REWARDS = {"pass": 1.0, "wrong_answer": -0.3, "runtime_error": -0.6, "timeout": -0.6, "compile_error": -1.0}
SANDBOX_ERROR = "sandbox_error"  # the sandbox itself failed, twice: no verdict, reward NaN (departure 3)

@dataclass
class TestResult:
    __test__ = False  # not a pytest test class
    verdict: str  # pass / wrong_answer / runtime_error / timeout
    seconds: float
    stdout: str = ""  # excerpt
    stderr: str = ""  # excerpt (the end, where the traceback is)
    returned: str = ""  # call-based: the returned value as JSON (excerpt)

@dataclass
class ExecResult:
    status: str  # the worst verdict over the tests, compile_error, or sandbox_error (no verdict: departure 3)
    passed: int
    total: int
    reward: float  # Eq. 3 (REWARDS[status]); NaN for sandbox_error, which no caller should learn from
    executed_lines: frozenset = frozenset()  # 1-based lines of `code` run by any test that ran
    details: list = field(default_factory=list)  # a TestResult per test that ran
    error: str = ""  # the compile error, or what went wrong in the sandbox itself
    # True: every line that ran in a test that ran is in executed_lines (nothing ran: compile_error). False:
    # some may have run unmarked (support/containment.py, departure 'tracing never decides a verdict';
    # coverage off; the sandbox failed): FGO keeps every token.
    coverage_complete: bool = False

# ---------------------------------------------------------------- comparison (docs/METHOD.md, section 2)
_NUMBER, _INTEGER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?"), re.compile(r"[+-]?\d+")

def outputs_match(got: str, want: str) -> bool:
    """stdin tests: equal whitespace tokens, or every token pair equal or the same number (departure
    'strict comparison')."""
    a, b = got.split(), want.split()
    return a == b or len(a) == len(b) and all(x == y or _same_number(x, y) for x, y in zip(a, b))

def _same_number(x: str, y: str) -> bool:  # integers exactly (any length); others within 1e-6 absolute or relative
    if _INTEGER.fullmatch(x) and _INTEGER.fullmatch(y):
        return decimal.Decimal(x) == decimal.Decimal(y)
    if not (_NUMBER.fullmatch(x) and _NUMBER.fullmatch(y)):
        return False
    return math.isclose(float(x), float(y), rel_tol=1e-6, abs_tol=1e-6)

def values_match(got, want) -> bool:
    """Call-based tests: `==` with tuples as lists and floats within 1e-6; APPS's [value] too."""
    return _close(got, want) or isinstance(want, (list, tuple)) and len(want) == 1 and _close(got, want[0])

def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)

def _close(a, b) -> bool:
    if _is_number(a) and _is_number(b) and (isinstance(a, float) or isinstance(b, float)):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(map(_close, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return a == b

# ---------------------------------------------------------------- the public interface (in the caller)
def run_tests(code: str, tests: dict, timeout: float = 4.0, *, coverage: bool = True) -> ExecResult:
    """Run one program on its tests (see the module docstring); `timeout` is seconds per test."""
    return run_batch([(code, tests)], timeout, workers=1, coverage=coverage)[0]

def assertion_tests(test_code: str) -> dict:
    """The tests dict of assertion tests: one test whose expected "value" is True, every assertion holding."""
    return {"inputs": [""], "outputs": [True], "fn_name": None, "test_code": test_code}

def run_batch(jobs: list, timeout: float = 4.0, workers: int | None = None,
              progress: bool = False, *, coverage: bool = True) -> list:
    """Run many (code, tests) jobs over the warm workers (default: one per core); input order kept."""
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    for i, (_, tests) in enumerate(jobs):
        _check(tests, f"jobs[{i}]")
    programs = [(code, tests["inputs"], tests.get("fn_name"), tests.get("test_code"))  # no expected outputs
                for code, tests in jobs]
    raws = run_programs(programs, timeout, workers, progress, coverage)
    failed = [i for i, raw in enumerate(raws) if "runs" not in raw and "compile_error" not in raw]
    if failed:  # the sandbox's own failure (departure 'sandbox_error'): those jobs once more
        again = run_programs([programs[i] for i in failed], timeout, workers, False, coverage)
        for i, raw in zip(failed, again):
            raws[i] = raw
    return [_judge(raw, tests) for raw, (_, tests) in zip(raws, jobs)]

def _check(tests, where):
    """Reject malformed tests before anything runs, naming what is wrong (test code that does not compile is the
    tests' fault, not a compile error of the program)."""
    if isinstance(tests, dict) and "test_code" in tests:
        if {**tests, "test_code": ""} != assertion_tests("") or not isinstance(tests["test_code"], str):
            raise ValueError(f"{where}: assertion tests are sandbox.assertion_tests(test_code), a str")
        try:
            compiled_tests(tests["test_code"])
        except (SyntaxError, ValueError, OverflowError, MemoryError, RecursionError) as e:
            raise ValueError(f"{where}: the test code does not compile: {type(e).__name__}: {e}") from None
        return
    ins, outs, fn = (tests.get(k) for k in ("inputs", "outputs", "fn_name")) if isinstance(tests, dict) else (0, 0, 0)
    if not (isinstance(ins, list) and isinstance(outs, list) and len(ins) == len(outs) > 0):
        raise ValueError(f"{where}: tests need 'inputs' and 'outputs', non-empty lists of equal length")
    if fn is None and not all(isinstance(x, str) for x in ins + outs):
        raise ValueError(f"{where}: stdin tests (fn_name None) need string inputs and outputs")
    if fn is not None and not (isinstance(fn, str) and all(isinstance(a, list) for a in ins)):
        raise ValueError(f"{where}: call-based tests need a str fn_name and each input a list of arguments")

def _judge(raw, tests) -> ExecResult:
    """A worker's raw runs -> verdicts, status and reward (Eq. 3)."""
    total = len(tests["inputs"])
    if "compile_error" in raw:
        return ExecResult("compile_error", 0, total, REWARDS["compile_error"], error=raw["compile_error"],
                          coverage_complete=True)
    if "runs" not in raw:  # no verdict: departure 'sandbox_error'
        return ExecResult(SANDBOX_ERROR, 0, total, math.nan, error=raw["error"])
    details = []
    for (kind, seconds, out, err, value), want in zip(raw["runs"], tests["outputs"]):
        if kind == "ok":
            try:
                ok = outputs_match(out, want) if value is None else values_match(json.loads(value), want)
            except (ValueError, RecursionError):  # a return value that is not JSON is not the answer
                ok = False
            kind = "pass" if ok else "wrong_answer"
        details.append(TestResult(kind, round(seconds, 4), out[:EXCERPT], err[-EXCERPT:], (value or "")[:EXCERPT]))
    status = min((d.verdict for d in details), key=REWARDS.__getitem__)  # the worst wins
    passed = sum(d.verdict == "pass" for d in details)
    return ExecResult(status, passed, total, REWARDS[status], frozenset(raw["lines"]), details,
                      coverage_complete=raw["complete"])

# ---------------------------------------------------------------- command line (printing: support/display.py)
def main(argv=None):
    from support import display  # what the command line reads and prints; the judge above needs neither
    parser, args = display.sandbox_arguments(argv)
    try:
        code, tests = display.sandbox_inputs(args)
        result = run_tests(code, tests, args.timeout)
    except (OSError, ValueError, ImportError) as e:  # ValueError includes JSON and Unicode errors
        parser.exit(2, f"sandbox.py: error: {e}\n")
    print(display.sandbox_report(code, tests, result, args.json, args.show_coverage))
    return 0 if result.status == "pass" else 1

if __name__ == "__main__":
    import signal
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends it quietly, as any Unix tool
    sys.exit(main())
