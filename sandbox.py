"""Run generated programs against APPS-style unit tests: verdict, reward and line coverage.

    python sandbox.py PROGRAM.py --data data/train.json --id 3 [--json] [--show-coverage]
    >>> run_tests(code, {"inputs": ["1 2\\n"], "outputs": ["3\\n"], "fn_name": None}).reward

What it implements (StepCoder, Dou et al. 2024): the compiler feedback that is the RL reward (§3.1,
Eq. 3, the CodeRL setting, SPEC §2): +1 all tests pass, -0.3 wrong answer, -0.6 runtime error or
timeout, -1 compile error; the worst outcome over the tests wins. And the line coverage that FGO
(§3.3, SPEC §4) masks the policy loss with: `executed_lines`, the 1-based lines of `code` that ran.

How: the caller's process never forks. A pool of small warm workers (fresh `python -c` processes
holding no torch, cached between calls, closed at exit) gets whole programs; a worker compiles the
program once and forks a fresh child per test. The child: new session, rlimits, temp cwd, scrubbed
environment, stdin/stdout/stderr on real files, unprivileged uid when started as root, Landlock;
then it runs the code object as `__main__`. The worker enforces the wall-clock deadline with
SIGKILL to the child's process group and, being a child subreaper, kills and reaps every process the
test left behind (daemons included) before it answers. Coverage goes to a shared anonymous mmap (one
byte per line) written by the child's tracer, so it survives a kill. Outputs are compared in the
caller (the workers never see expected outputs).

Departures from the paper / the APPS harness, and why:
1. Tests stop at the first runtime error or timeout: later tests cannot change status or reward.
   So `passed` counts the tests that ran and passed, and `executed_lines` is the union over the
   tests that ran. Wrong answers do not stop: a later crash would be worse.
2. Tracing never decides a verdict: a traced run gets `timeout + budget` (budget = min(0.5 s,
   timeout/4)); on 3.12 sys.monitoring reports each line once (DISABLE), so its cost is bounded by
   the program's size; on 3.11 sys.settrace switches itself off after `budget` seconds (coverage
   then holds only that part). A traced run killed at the longer deadline was a timeout anyway; one
   that crashed or finished after `timeout` is re-run untraced and that run gives the verdict.
3. Comparison is SPEC §2, not APPS's: whitespace tokens, numbers within 1e-6 abs/rel, no
   lower-casing, no set comparison (both gave false passes). Call-based: `==` with tuples as
   lists, floats within 1e-6, and `outputs[i] == [value]` accepted (APPS wraps some outputs).
4. `executed_lines` is widened from raw line events to whole statements: every line of a multi-line
   statement that ran, and the `else:`/`finally:`/`try:` lines of blocks that ran (FGO keeps tokens).
5. The timeout is per test, wall clock (RLIMIT_CPU only backs it up); output over 16 MiB is a
   runtime error (output limit), as in judges.
6. Workers preload common stdlib modules (a forked child finds them imported, as after `import`),
   run with PYTHONHASHSEED=0 (set order reproducible); `random` is reseeded in every child.
7. At exit the child does what CPython does: join non-daemon threads, run atexit, flush stdio (a
   failed flush is exit status 120), then clear the module so open files are flushed.

Isolated, and what is not (Linux; measured on kernel 6.18, Landlock ABI 7, running as root):
- Processes: each test runs in a new session/process group; at its end everything it started is
  SIGKILLed and reaped (subreaper), signal handlers notwithstanding. Limits: 1 GiB address space
  per process, CPU seconds, 16 processes+threads, 16 MiB per written file, no core files.
- As root, the child runs as uid/gid 61000+worker (no groups): it cannot signal or ptrace your
  processes, and the process limit applies. Not root: it runs as you; the process limit is counted
  together with your own processes and it may signal them unless Landlock ABI >= 6.
- Landlock (ABI >= 1): writes only beneath its temp dir (and /dev/null); ABI >= 4: no TCP connect
  or bind; ABI >= 6: no signals to, or abstract unix sockets of, processes outside the sandbox.
  Missing levels are warned about once; without Landlock, writes are limited only by the uid.
- NOT isolated: reads (any file the uid may read: your source, data, /etc); UDP and pathname unix
  sockets; memory across processes (16 x 1 GiB, no cgroup); disk space inside the temp dir; the
  kernel (no seccomp); CPU contention with other tests. A program can forge its own coverage and
  its call-based return value (they are written from its own process); it cannot see the
  expected outputs. Do not run untrusted code on a machine you care about with this alone.
"""
import argparse, atexit, ctypes, gc, json, linecache, math, mmap, os, pickle, re, resource
import select, selectors, shutil, signal, struct, subprocess, sys, tempfile, threading, time
import traceback, types, warnings
from dataclasses import asdict, dataclass, field

FILENAME = "<solution>"  # every program is compiled under this name, so its lines map to `code`
REWARDS = {"pass": 1.0, "wrong_answer": -0.3, "runtime_error": -0.6, "timeout": -0.6, "compile_error": -1.0}
RANK = {"compile_error": 0, "runtime_error": 1, "timeout": 1, "wrong_answer": 2, "pass": 3}
MEMORY_BYTES = 1 << 30   # RLIMIT_AS of each process of a test
OUTPUT_BYTES = 16 << 20  # RLIMIT_FSIZE: caps stdout, stderr and any file the program writes
NPROC = 16               # processes + threads of one test (root: each worker has its own uid)
SANDBOX_UID = 61000      # as root, worker i runs its tests as uid = gid = SANDBOX_UID + i
EXCERPT = 1000           # characters of stdout / stderr kept per test
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
       "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
PRELOAD = ("bisect", "collections", "copy", "datetime", "decimal", "fractions", "functools",
           "heapq", "itertools", "math", "operator", "random", "re", "statistics", "string",
           "typing")
_HERE = os.path.dirname(os.path.abspath(__file__))
_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.syscall.argtypes = _LIBC.prctl.argtypes = [ctypes.c_long] * 5  # declared: cheaper calls in each child
_LIBC.syscall.restype = ctypes.c_long


@dataclass
class TestResult:
    verdict: str   # pass / wrong_answer / runtime_error / timeout
    seconds: float
    stdout: str = ""  # first EXCERPT characters
    stderr: str = ""  # last EXCERPT characters (where the traceback is)


@dataclass
class ExecResult:
    status: str  # the worst verdict over the tests (SPEC §2), or compile_error
    passed: int
    total: int
    reward: float
    executed_lines: frozenset = frozenset()  # 1-based lines of `code` run by any test that ran
    details: list = field(default_factory=list)  # one TestResult per test that ran
    error: str = ""  # compile error message, or what went wrong in the sandbox itself


# ---------------------------------------------------------------- comparison (SPEC §2)
_TRACER_MAY_CAUSE = re.compile(r"RecursionError|MemoryError|sandbox: killed by signal")  # a tracer adds frames
_KEYWORD_LINE = re.compile(r"\s*(else|finally|try|except)\s*:")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def outputs_match(got: str, want: str) -> bool:
    """stdin tests: equal whitespace tokens, or every token pair equal or numbers within 1e-6."""
    a, b = got.split(), want.split()
    return a == b or len(a) == len(b) and all(
        x == y or _NUMBER.fullmatch(x) and _NUMBER.fullmatch(y)
        and math.isclose(float(x), float(y), rel_tol=1e-6, abs_tol=1e-6) for x, y in zip(a, b))


def values_match(got, want) -> bool:
    """Call-based tests: `==` with tuples as lists and floats within 1e-6; APPS's [value] too."""
    return _close(got, want) or isinstance(want, (list, tuple)) and len(want) == 1 and _close(got, want[0])


def _close(a, b) -> bool:
    num = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)
    if num(a) and num(b) and (isinstance(a, float) or isinstance(b, float)):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) or a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(map(_close, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return a == b


# ---------------------------------------------------------------- public interface
def run_tests(code: str, tests: dict, timeout: float = 4.0, *, coverage: bool = True) -> ExecResult:
    """Run one program on its tests (see the module docstring); `timeout` is seconds per test."""
    return run_batch([(code, tests)], timeout, workers=1, coverage=coverage)[0]


def run_batch(jobs: list, timeout: float = 4.0, workers: int | None = None,
              progress: bool = False, *, coverage: bool = True) -> list:
    """Run many (code, tests) jobs over the warm worker pool; results in input order."""
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    for i, (code, tests) in enumerate(jobs):
        _check(tests, f"jobs[{i}]")
    results = [None] * len(jobs)
    bar = _progress_bar(len(jobs)) if progress else None
    with _POOL.lock:
        try:
            pool = _POOL.start(max(1, min(workers or os.cpu_count() or 1, len(jobs))))
            todo, busy, sel = iter(range(len(jobs))), {}, selectors.DefaultSelector()
            for w in pool:
                _feed(w, todo, jobs, timeout, coverage, busy, sel)
            while busy:
                for key, _ in sel.select():
                    w = key.data
                    sel.unregister(w.proc.stdout)
                    i, raw = busy.pop(w), w.recv()
                    if raw is None:  # the worker died (it should not): report it, replace it
                        raw = {"error": f"sandbox worker died (exit status {w.proc.wait()})"}
                        w = _POOL.replace(w)
                    results[i] = _judge(raw, jobs[i][1])
                    if bar is not None:
                        bar.update(1)
                    _feed(w, todo, jobs, timeout, coverage, busy, sel)
        except BaseException:
            _POOL.close()  # a half-finished batch leaves workers busy: start afresh next time
            raise
        finally:
            if bar is not None:
                bar.close()
    return results


def _check(tests, where):
    """Reject malformed tests early, with a message naming what is wrong."""
    if not isinstance(tests, dict) or not {"inputs", "outputs"} <= tests.keys():
        raise ValueError(f"{where}: tests must be a dict with 'inputs', 'outputs' and 'fn_name'")
    ins, outs, fn = tests["inputs"], tests["outputs"], tests.get("fn_name")
    if not isinstance(ins, list) or not isinstance(outs, list) or len(ins) != len(outs) or not ins:
        raise ValueError(f"{where}: 'inputs' and 'outputs' must be non-empty lists of equal length")
    if fn is None and not all(isinstance(s, str) for s in ins + outs):
        raise ValueError(f"{where}: stdin tests (fn_name None) need string inputs and outputs")
    if fn is not None and (not isinstance(fn, str) or not all(isinstance(a, list) for a in ins)):
        raise ValueError(f"{where}: call-based tests need fn_name a str and each input a list of arguments")


def _progress_bar(total):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional here: no bar without it
        return None
    return tqdm(total=total, desc="sandbox", unit="prog")


def _feed(w, todo, jobs, timeout, coverage, busy, sel):
    """Give worker `w` the next job, if any (only the inputs travel: it never sees outputs)."""
    i = next(todo, None)
    if i is not None:
        code, tests = jobs[i]
        w.send((code, tests["inputs"], tests.get("fn_name"), timeout, coverage))
        busy[w] = i
        sel.register(w.proc.stdout, selectors.EVENT_READ, w)


def _judge(raw, tests) -> ExecResult:
    """Turn a worker's raw runs into verdicts, status and reward (SPEC §2)."""
    total = len(tests["inputs"])
    if "compile_error" in raw or "error" in raw:
        status = "compile_error" if "compile_error" in raw else "runtime_error"
        return ExecResult(status, 0, total, REWARDS[status], error=raw.get("compile_error", raw.get("error")))
    details = []
    for (kind, seconds, out, err, value), want in zip(raw["runs"], tests["outputs"]):
        verdict = kind
        if kind == "ok" and tests.get("fn_name") is None:
            verdict = "pass" if outputs_match(out, want) else "wrong_answer"
        elif kind == "ok":
            try:
                verdict = "pass" if values_match(json.loads(value), want) else "wrong_answer"
            except (ValueError, RecursionError):
                verdict = "wrong_answer"
        details.append(TestResult(verdict, round(seconds, 4), out[:EXCERPT], err[-EXCERPT:]))
    status = min((d.verdict for d in details), key=RANK.__getitem__)
    passed = sum(d.verdict == "pass" for d in details)
    return ExecResult(status, passed, total, REWARDS[status], frozenset(raw["lines"]), details)


class _Worker:
    """A warm `python -c` process (no torch: it imports only this module) that runs jobs."""

    def __init__(self, index):
        boot = f"import sys; sys.path.insert(0, {_HERE!r}); import sandbox; sandbox._serve({index})"
        self.index = index
        self.proc = subprocess.Popen([sys.executable, "-c", boot], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=ENV, close_fds=True)

    def send(self, obj):
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.write(struct.pack("<Q", len(data)) + data)
        self.proc.stdin.flush()

    def recv(self):
        head = self.proc.stdout.read(8)
        return pickle.loads(self.proc.stdout.read(struct.unpack("<Q", head)[0])) if len(head) == 8 else None


class _Pool:
    """The one cached pool of this process (module state: created lazily, closed at exit)."""

    def __init__(self):
        self.lock, self.workers, self.owner = threading.Lock(), [], None

    def start(self, n):
        if self.owner != os.getpid():  # first use, or we are a fork of the process that made it
            self.workers, self.owner = [], os.getpid()
            atexit.register(self.close)
            _warn_degraded(landlock_abi())
        self.workers = [w if w.proc.poll() is None else _Worker(w.index) for w in self.workers]
        self.workers += [_Worker(i) for i in range(len(self.workers), n)]
        return self.workers[:n]

    def replace(self, w):
        self.workers[w.index] = _Worker(w.index)
        return self.workers[w.index]

    def close(self):
        for w in self.workers if self.owner == os.getpid() else []:
            w.proc.stdin.close()  # EOF: the worker exits after its current test
            try:
                w.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
        self.workers = []


_POOL = _Pool()


def _warn_degraded(abi):
    missing = [what for level, what in ((1, "writes outside the temp dir"), (4, "TCP connect/bind"),
                                        (6, "signals to outside processes")) if abi < level]
    if missing:
        warnings.warn(f"sandbox: Landlock ABI {abi} on this kernel; not confined: {', '.join(missing)}")


# ---------------------------------------------------------------- Landlock (Linux >= 5.13)
def _prctl(option, arg2, arg3=0):
    if _LIBC.prctl(option, arg2, arg3, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}, {arg2})")


def _syscall(number, a=0, b=0, c=0, d=0):
    r = _LIBC.syscall(number, a, b, c, d)
    if r < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return r


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where Landlock is missing or disabled."""
    try:
        return _syscall(444, 0, 0, 1)  # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    except OSError:
        return 0


def _landlock_ruleset(home, abi, readable):
    """A ruleset (fd) for this worker's children: read only `readable` and `home`, write only beneath
    `home` (and /dev/null); ABI >= 4: no TCP connect/bind; ABI >= 6: no signals or abstract unix
    sockets outside. Built once per worker; each child applies it with landlock_restrict_self."""
    read, write = 0b1101, 0x1FF2 | (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0)  # EXECUTE, READ_*; WRITE, REMOVE_*, MAKE_*, REFER, TRUNCATE
    attr = (ctypes.c_uint64 * 3)(read | write, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)  # fs, net (TCP), scoped
    ruleset = _syscall(444, ctypes.addressof(attr), ctypes.sizeof(attr), 0)
    rules = [(home, read | write), ("/dev/null", (read | write) & (4 | 2 | 1 << 14))]
    rules += [(path, read if os.path.isdir(path) else read & 5) for path in readable]  # files: EXECUTE, READ_FILE
    for path, allowed in rules:
        fd = os.open(path, os.O_PATH)
        rule = ctypes.create_string_buffer(struct.pack("=Qi", allowed, fd))  # landlock_path_beneath_attr
        _syscall(445, ruleset, 1, ctypes.addressof(rule), 0)
        os.close(fd)
    return ruleset


_CAP_HEADER = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
_CAP_READ = (ctypes.c_uint32 * 6)(4, 4, 4, 0, 0, 0)  # effective, permitted, inheritable: CAP_DAC_READ_SEARCH
_CAP_NONE = (ctypes.c_uint32 * 6)()


def _drop_privileges(uid, keep_read):
    """Root -> uid/gid `uid`, no groups. With keep_read (only under Landlock, which then confines reads)
    it keeps CAP_DAC_READ_SEARCH, also across exec: the interpreter may live under /root (mode 700)."""
    _prctl(8, 1)  # PR_SET_KEEPCAPS
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    if _LIBC.capset(_CAP_HEADER, _CAP_READ if keep_read else _CAP_NONE) != 0:
        raise OSError(ctypes.get_errno(), "capset")
    if keep_read:
        _prctl(47, 2, 2)  # PR_CAP_AMBIENT_RAISE CAP_DAC_READ_SEARCH
    _prctl(4, 1)  # PR_SET_DUMPABLE: /proc/self stays ours after the uid change


def _readable():
    """What a program may read under Landlock: the interpreter, its libraries and system files."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, "/usr", "/lib", "/lib64", "/bin",
             "/dev", "/proc", "/etc/ld.so.cache", "/etc/localtime", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf"}
    paths.update(p for p in sys.path if p and os.path.abspath(p) != _HERE)
    return sorted(p for p in paths if os.path.exists(p))


# ---------------------------------------------------------------- the worker (a warm parent)
def _serve(index):
    """Worker main loop: jobs in on fd 0, results out on fd 1 (8-byte length + pickle)."""
    _prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans of a test become our children
    rfd, wfd, null = os.dup(0), os.dup(1), os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0), os.dup2(null, 1)
    for name in PRELOAD:
        __import__(name)
    gc.freeze()  # the children's collections skip the worker's own objects (fewer copy-on-write faults)
    root, abi = os.geteuid() == 0, landlock_abi()
    uid = SANDBOX_UID + index if root else None
    home = tempfile.mkdtemp(prefix=f"sandbox-{index}-")  # each test gets a fresh cwd inside; mode 711
    os.chmod(home, 0o711)
    files = [os.open(home, os.O_TMPFILE | os.O_RDWR, 0o600) for _ in range(4)]  # stdin, stdout, stderr, value
    for fd in files[:3] if root else []:
        os.fchown(fd, uid, uid)  # so that /dev/stdin, /dev/stdout reopen as in a real process
    nproc = NPROC if root else _user_tasks(os.geteuid()) + NPROC
    ctx = {"uid": uid, "home": home, "files": files, "tests": 0, "path": [p for p in sys.path if p not in ("", _HERE)],
           "ruleset": _landlock_ruleset(home, abi, _readable()) if abi >= 1 else None,
           "limits": [_capped(resource.RLIMIT_AS, MEMORY_BYTES), _capped(resource.RLIMIT_FSIZE, OUTPUT_BYTES),
                      _capped(resource.RLIMIT_NPROC, nproc), _capped(resource.RLIMIT_CORE, 0)]}
    try:
        _serve_jobs(rfd, wfd, ctx)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _capped(res, soft, hard=None):
    """(res, soft, hard) lowered to what this process may set."""
    cap, hard = resource.getrlimit(res)[1], soft if hard is None else hard
    return (res, soft, hard) if cap == resource.RLIM_INFINITY else (res, min(soft, cap), min(hard, cap))


def _serve_jobs(rfd, wfd, ctx):
    while True:
        head = _read(rfd, 8)
        if len(head) < 8:
            return  # the caller is gone
        job = pickle.loads(_read(rfd, struct.unpack("<Q", head)[0]))
        try:
            result = _run_program(*job, ctx)
        except Exception as e:  # a bug here must not hang the caller
            result = {"error": f"sandbox: {type(e).__name__}: {e}"}
        data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        data = struct.pack("<Q", len(data)) + data
        while data:
            data = data[os.write(wfd, data):]


def _read(fd, n):
    buf = b""
    while len(buf) < n and (chunk := os.read(fd, n - len(buf))):
        buf += chunk
    return buf


def _user_tasks(uid):
    """Processes + threads of `uid` now (RLIMIT_NPROC counts them all when we cannot change uid)."""
    n = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            n += len(os.listdir(f"/proc/{pid}/task")) if os.stat(f"/proc/{pid}").st_uid == uid else 0
        except OSError:
            pass
    return n


def _run_program(code, inputs, fn_name, timeout, coverage, ctx):
    """Compile once; run each test in a fresh child; return raw runs and executed lines."""
    try:
        program = compile(code, FILENAME, "exec", dont_inherit=True)
    except (SyntaxError, ValueError, OverflowError, MemoryError, RecursionError) as e:
        return {"compile_error": f"{type(e).__name__}: {e}"}
    cov = mmap.mmap(-1, code.count("\n") + 2) if coverage else None
    budget, runs = min(0.5, timeout / 4), []
    for inp in inputs:
        if cov is None:
            run = _run_one(code, program, inp, fn_name, timeout, None, ctx)
        else:
            run = _run_one(code, program, inp, fn_name, timeout + budget, (cov, budget), ctx)
            if run[0] == "ok" and run[1] > timeout or run[0] == "runtime_error" and _TRACER_MAY_CAUSE.search(run[3]):
                run = _run_one(code, program, inp, fn_name, timeout, None, ctx)  # verdict untraced
        runs.append(run)
        if run[0] != "ok":
            break
    hit = {i for i, b in enumerate(cov[:] if cov is not None else b"") if b}
    return {"runs": runs, "lines": sorted(_statement_lines(program, code, hit) if hit else ())}


def _run_one(code, program, inp, fn_name, limit, trace, ctx):
    """Fork a child for one test; kill it at `limit` seconds. -> (kind, seconds, stdout, stderr, value)."""
    ctx["tests"] += 1
    cwd, fds = os.path.join(ctx["home"], str(ctx["tests"])), ctx["files"]
    os.mkdir(cwd, 0o700)
    for fd in fds:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
    if fn_name is None:
        os.write(fds[0], inp.encode())
        os.lseek(fds[0], 0, os.SEEK_SET)
    limits = ctx["limits"] + [_capped(resource.RLIMIT_CPU, math.ceil(limit) + 1, math.ceil(limit) + 2)]
    try:
        if ctx["uid"] is not None:
            os.chown(cwd, ctx["uid"], ctx["uid"])
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            _child(code, program, inp, fn_name, cwd, limits, trace, ctx)  # never returns
        pidfd = os.pidfd_open(pid)
        poll = select.poll()
        poll.register(pidfd, select.POLLIN)
        timed_out = not poll.poll(limit * 1000)
        seconds = time.perf_counter() - start
        os.close(pidfd)
        for kill in (os.killpg, os.kill):  # the whole group, whatever it does with signals
            try:
                kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        status = os.waitpid(pid, 0)[1]
        _reap_all()
        out = os.pread(fds[1], OUTPUT_BYTES, 0).decode("utf-8", "replace")
        err = os.pread(fds[2], OUTPUT_BYTES, max(0, os.fstat(fds[2]).st_size - 4 * EXCERPT)).decode("utf-8", "replace")
        value = os.pread(fds[3], OUTPUT_BYTES, 0).decode("utf-8", "replace") if fn_name else None
        if timed_out or os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU:
            return ("timeout", seconds, out[:EXCERPT], err, None)
        if os.WIFSIGNALED(status) or os.WEXITSTATUS(status) != 0 or fn_name and not value:
            if os.fstat(fds[1]).st_size >= OUTPUT_BYTES:
                err += "\nsandbox: output limit exceeded"
            how = f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit status {os.WEXITSTATUS(status)}"
            return ("runtime_error", seconds, out[:EXCERPT], f"{err}\nsandbox: {how}", None)
        return ("ok", seconds, out, err, value)
    finally:
        try:
            os.rmdir(cwd)  # the usual case: the test left nothing
        except OSError:
            shutil.rmtree(cwd, ignore_errors=True)


def _reap_all():
    """SIGKILL and reap every process left under this worker (orphans are reparented to us)."""
    me = os.getpid()
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0]:
                continue
        except ChildProcessError:
            return  # nothing left, not even a zombie
        try:
            with open(f"/proc/{me}/task/{me}/children") as f:
                children = [int(p) for p in f.read().split()]
        except OSError:  # kernel without CONFIG_PROC_CHILDREN: read every process's parent
            children = [int(p) for p in filter(str.isdigit, os.listdir("/proc")) if _ppid(p) == me]
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.waitpid(-1, 0)


def _ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _child(code, program, inp, fn_name, cwd, limits, trace, ctx):
    """In the forked child: contain this process, then run the program. Ends with os._exit."""
    status = 1
    try:
        os.setsid()
        keep = ctx["files"] + ([ctx["ruleset"]] if ctx["ruleset"] is not None else [])
        for target, fd in enumerate(keep):
            os.dup2(fd, target)  # 0 stdin, 1 stdout, 2 stderr, 3 the returned value, 4 the Landlock ruleset
        os.closerange(len(keep), 1 << 20)  # the worker's pipes and everything else
        os.chdir(cwd)
        for res, soft, hard in limits:
            resource.setrlimit(res, (soft, hard))
        if ctx["uid"] is not None:
            _drop_privileges(ctx["uid"], keep_read=ctx["ruleset"] is not None)
        if ctx["ruleset"] is not None:
            _prctl(38, 1)  # PR_SET_NO_NEW_PRIVS, then landlock_restrict_self
            _syscall(446, 4, 0)
            os.close(4)
        os.environ["HOME"] = os.environ["TMPDIR"] = cwd  # the rest of the environment is ENV
        tempfile.tempdir = None
        sys.path[:] = [cwd] + ctx["path"]
        # sys.stdin/stdout/stderr are the worker's own, as Python made them at start (never used: empty
        # buffers), now on fds 0-2: exactly a real process's streams with input and output redirected.
        sys.argv = [FILENAME]
        linecache.cache[FILENAME] = (len(code), None, code.splitlines(True), FILENAME)  # tracebacks show code
        if trace is not None:
            _trace_lines(trace[0], program, time.monotonic() + trace[1])
        status = _run_main(program, inp, fn_name)
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(status)


def _run_main(program, inp, fn_name):
    """Run the program as __main__ (then call fn_name on the arguments); exit as CPython does."""
    module = types.ModuleType("__main__")
    module.__file__ = FILENAME
    sys.modules["__main__"] = module
    status = 0
    try:
        exec(program, module.__dict__)
        if fn_name is not None:
            ns = module.__dict__
            fn = ns[fn_name] if fn_name in ns else getattr(ns["Solution"](), fn_name)
            data = json.dumps(fn(*inp), default=lambda o: o.tolist() if hasattr(o, "tolist") else repr(o)).encode()
            while data:
                data = data[os.write(3, data):]
    except SystemExit as e:  # exit(), sys.exit(0) are normal exits; exit("message") prints it, status 1
        status = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except BaseException as e:
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)  # from the program's frame on
        status = 1
    try:
        threading._shutdown()  # wait for non-daemon threads, as the interpreter does at exit
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
        status = status or 1
    for stream in (sys.stdout, sys.stderr):
        try:
            if not stream.closed:
                stream.flush()
        except BaseException:
            status = 120  # CPython's exit status when flushing stdout fails at exit
    module.__dict__.clear()  # open files the program forgot are flushed as they are freed
    return status & 0xFF


def _trace_lines(buf, program, stop_at):
    """Set buf[line] = 1 for each line of the program that runs (see departure 2 for the cost)."""
    size = len(buf)
    if hasattr(sys, "monitoring"):  # 3.12+: each line reported once, then DISABLEd
        mon = sys.monitoring

        def line(code, lineno):
            if 0 <= lineno < size:
                buf[lineno] = 1
            return mon.DISABLE
        mon.use_tool_id(mon.COVERAGE_ID, "sandbox")
        mon.register_callback(mon.COVERAGE_ID, mon.events.LINE, line)
        todo = [program]
        while todo:  # the program's own code objects only: library code is not instrumented
            code = todo.pop()
            mon.set_local_events(mon.COVERAGE_ID, code, mon.events.LINE)
            todo += [c for c in code.co_consts if isinstance(c, types.CodeType)]
        return
    events, clock, left = [0], time.monotonic, {}  # 3.11: sys.settrace, off at stop_at; `left`: lines not yet seen

    def tracer(frame, event, arg):
        events[0] += 1
        if events[0] & 1023 == 0 and clock() > stop_at:
            sys.settrace(None)
            threading.settrace(None)
            return None
        code = frame.f_code
        if code.co_filename != FILENAME:
            return None
        todo = left.get(code)
        if todo is None:
            todo = left[code] = {n for _, _, n in code.co_lines() if n and n != code.co_firstlineno}
        if event == "line" and 0 <= frame.f_lineno < size:
            buf[frame.f_lineno] = 1
            todo.discard(frame.f_lineno)
        return tracer if todo else None  # a code object whose lines all ran is traced no more
    threading.settrace(tracer)
    sys.settrace(tracer)


def _statement_lines(program, code, hit):
    """Widen raw line events (departure 4). A code line on which no instruction starts (a closing
    bracket, a continued string or signature) ran if the innermost multi-line span holding it began
    on a line that ran; a bare `else:`/`finally:`/`try:`/`except:` line ran if the next code line did."""
    spans, starts, todo = set(), set(), [program]
    while todo:
        c = todo.pop()
        todo += [k for k in c.co_consts if isinstance(k, types.CodeType)]
        for start, end, _, _ in c.co_positions():
            starts.add(start)
            if start and end and end > start:
                spans.add((start, end))
    text, lines = code.splitlines(), set(hit)
    real = [n for n, t in enumerate(text, 1) if t.strip() and not t.lstrip().startswith("#")]
    for n, following in zip(real, real[1:] + [0]):
        if _KEYWORD_LINE.match(text[n - 1]):
            if following in hit:
                lines.add(n)
        elif n not in starts:
            inner = min((s for s in spans if s[0] < n <= s[1]), key=lambda s: s[1] - s[0], default=(0, 0))
            if inner[0] in hit:
                lines.add(n)
    return lines


# ---------------------------------------------------------------- command line
def _load_tests(path, problem_id):
    """One problem's tests: through curriculum.load_problems when present, else APPS+ JSON / JSON Lines."""
    try:
        from curriculum import load_problems
        problems = [(p.problem_id, p.tests) for p in load_problems(path)]
    except ImportError:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            records = json.loads(text)
        except json.JSONDecodeError:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        try:
            problems = [(r["problem_id"], {"inputs": r["inputs"], "outputs": r["outputs"], "fn_name": r.get("fn_name")})
                        for r in (records if isinstance(records, list) else [records])]
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: every record needs problem_id, inputs, outputs (missing {e})") from None
    for pid, tests in problems:
        if str(pid) == problem_id:
            return tests
    ids = ", ".join(str(pid) for pid, _ in problems[:10])
    raise ValueError(f"no problem with id {problem_id!r} in {path} (ids there: {ids}{', ...' if len(problems) > 10 else ''})")


def main(argv=None):
    usage = "python sandbox.py PROGRAM.py --data FILE --id ID [--timeout S] [--json] [--show-coverage]"
    p = argparse.ArgumentParser(description="Run one program against one problem's tests.", usage=usage)
    p.add_argument("program", help="a Python file")
    p.add_argument("--data", required=True, help="problems file (APPS+ JSON list or JSON Lines)")
    p.add_argument("--id", required=True, help="problem_id of the problem whose tests to run")
    p.add_argument("--timeout", type=float, default=4.0, help="seconds per test (default 4)")
    p.add_argument("--json", action="store_true", help="print the ExecResult as JSON")
    p.add_argument("--show-coverage", action="store_true", help="print the program with executed lines marked")

    def die(msg):
        print(f"sandbox.py: error: {msg}", file=sys.stderr)
        sys.exit(2)
    p.error = lambda msg: die(f"{msg}; usage: {usage}")
    args = p.parse_args(argv)
    try:
        with open(args.program, encoding="utf-8") as f:
            code = f.read()
        tests = _load_tests(args.data, args.id)
        result = run_tests(code, tests, args.timeout)
    except (OSError, ValueError) as e:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
        die(str(e))
    if args.json:
        print(json.dumps({**asdict(result), "executed_lines": sorted(result.executed_lines)}, indent=1))
        return
    if args.show_coverage:
        print("  (+ ran, - never ran)")
        for n, line in enumerate(code.splitlines(), 1):
            mark = "+" if n in result.executed_lines else " " if not line.strip() or line.lstrip().startswith("#") else "-"
            print(f"{n:4} {mark} | {line}")
    for i, d in enumerate(result.details, 1):
        print(f"test {i}: {d.verdict:13} {d.seconds:.3f} s" + (f"\n  stderr: ...{d.stderr[-300:].strip()}" if d.verdict == "runtime_error" else ""))
    print(f"{result.status}: reward {result.reward:+.1f}, passed {result.passed}/{result.total}"
          + (f" ({result.error})" if result.error else ""))


if __name__ == "__main__":
    main()
