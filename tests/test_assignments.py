"""Grading tests for docs/ASSIGNMENTS.md: one exercise per function of the method.

Each exercise has
    check_<name>(fn)   asserts fn's behaviour against values computed by hand (in the comments);
    test_grade_<name>  runs the check on the project's own function, looked up when the test runs,
                       so whatever a student wrote into stepcoder.py / curriculum.py / sandbox.py
                       is what gets graded:  python3 -m pytest -q tests/test_assignments.py -k grade_<name>
and the meta-tests at the bottom (test_meta_*) prove that every check fails for a body of
`raise NotImplementedError` and for the usual wrong answers, which are written out there.
Students: the wrong answers at the bottom (and the git history) are the answer key; grade first.

Pure functions only: no model, no weights, no sandbox process; the whole file runs in seconds.
"""
import importlib
import math

import pytest
import torch

F64 = torch.float64


def real(module: str, name: str):
    """The project's function as it is in the working tree now (a student's edit included)."""
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=F64)


def close(a, b, what: str, atol: float = 1e-6):
    a, b = torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64)
    assert a.shape == b.shape and torch.allclose(a, b, atol=atol), f"{what}: got {a.tolist()}, want {b.tolist()}"


# =============================================================== 1. compute_gae (Eq. 2)

def check_compute_gae(compute_gae):
    # Row 0: three generated tokens. Row 1: two tokens, then a padded column whose value (9.0)
    # and reward (5.0) must not reach the real tokens. gamma = 0.9, lam = 0.5 (gamma*lam = 0.45).
    rewards = t([[0.0, 0.0, 1.0], [0.0, 1.0, 5.0]])
    values = t([[0.5, 0.2, 0.4], [0.5, 0.2, 9.0]])
    mask = t([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    inputs = [x.clone() for x in (rewards, values, mask)]
    adv, ret = compute_gae(rewards, values, mask, 0.9, 0.5)
    # row 0: d2 = 1 + .9*0 - .4 = .6           A2 = .6
    #        d1 = 0 + .9*.4 - .2 = .16         A1 = .16 + .45*.6 = .43
    #        d0 = 0 + .9*.2 - .5 = -.32        A0 = -.32 + .45*.43 = -.1265
    # row 1: d1 = 1 + .9*0 - .2 = .8 (the episode ends: no V after the last token)   A1 = .8
    #        d0 = 0 + .9*.2 - .5 = -.32        A0 = -.32 + .45*.8 = .04
    real_tokens = mask.bool()
    close(adv[0], [-0.1265, 0.43, 0.6], "advantages of a full row (gamma=0.9, lam=0.5)")
    close(adv[1, :2], [0.04, 0.8], "advantages of a row with padding (the padded column must not leak in)")
    close(ret[real_tokens], (adv + values)[real_tokens], "returns must be advantages + values")
    close(ret[0], [0.3735, 0.63, 1.0], "returns of the full row")
    for x, x0 in zip((rewards, values, mask), inputs):
        assert torch.equal(x, x0), "compute_gae must not modify its inputs"

    # lam = 0: the one-step TD error, A_t = r_t + gamma*V(s_{t+1}) - V(s_t).
    adv, _ = compute_gae(t([[1.0, 2.0, 3.0]]), t([[0.1, 0.2, 0.3]]), t([[1.0, 1.0, 1.0]]), 0.5, 0.0)
    close(adv, [[1.0 + 0.5 * 0.2 - 0.1, 2.0 + 0.5 * 0.3 - 0.2, 3.0 - 0.3]], "lam=0 must give the TD errors")
    # gamma = lam = 1: the Monte-Carlo return minus the value, A_t = sum_{k>=t} r_k - V(s_t).
    adv, _ = compute_gae(t([[1.0, 2.0, 3.0, 0.0]]), t([[0.1, 0.2, 0.3, 7.0]]), t([[1.0, 1.0, 1.0, 0.0]]), 1.0, 1.0)
    close(adv[0, :3], [6.0 - 0.1, 5.0 - 0.2, 3.0 - 0.3], "gamma=lam=1 must give sum of future rewards - V")
    # A one-token episode: A = r - V, whatever the padding holds.
    adv, _ = compute_gae(t([[2.0, 4.0]]), t([[0.5, 3.0]]), t([[1.0, 0.0]]), 0.9, 0.5)
    close(adv[0, 0], 1.5, "a one-token episode: A = r - V")


def test_grade_compute_gae():
    check_compute_gae(real("stepcoder", "compute_gae"))


# =============================================================== 2. policy_loss (Eq. 1)

# old log-probs and the ratios pi/pi_old we want; new = old + log(ratio). clip = 0.2.
PL_OLD = [[-1.0, -2.0, -0.5, -3.0, -1.0, -0.7]]
PL_RATIO = [1.5, 0.5, 0.5, 1.5, 3.0, 1.1]
PL_ADV = [[1.0, -1.0, 1.0, -2.0, 5.0, 1.0]]
PL_MASK = [[1.0, 1.0, 1.0, 1.0, 0.0, 1.0]]   # token 4 was masked by FGO


def check_policy_loss(policy_loss):
    old = t(PL_OLD)
    new = (old + torch.log(t([PL_RATIO]))).requires_grad_(True)
    loss, ratio, approx_kl, clipfrac = policy_loss(new, old, t(PL_ADV), t(PL_MASK), 0.2)
    # per-token loss max(-A*r, -A*clip(r, .8, 1.2)):
    #   t0 r=1.5 A=+1: max(-1.5, -1.2) = -1.2   clipped: no gain beyond 1+eps
    #   t1 r=0.5 A=-1: max( 0.5,  0.8) =  0.8   clipped
    #   t2 r=0.5 A=+1: max(-0.5, -0.8) = -0.5   the pessimistic, unclipped term
    #   t3 r=1.5 A=-2: max( 3.0,  2.4) =  3.0   unclipped
    #   t4 masked by FGO (r=3, A=5 would give -6)
    #   t5 r=1.1 A=+1: -1.1, inside the clip range
    # mean over the 5 kept tokens: (-1.2 + 0.8 - 0.5 + 3.0 - 1.1) / 5 = 0.2
    assert torch.is_tensor(loss) and loss.dim() == 0, "the loss must be a scalar tensor"
    close(loss, 0.2, "clipped surrogate averaged over the FGO-kept tokens")
    close(ratio, [PL_RATIO], "ratio = exp(new - old) on every token")
    close(clipfrac, 4 / 5, "clipfrac: kept tokens with |ratio - 1| > clip (t0..t3 of 5)")
    k3 = [(r - 1) - math.log(r) for i, r in enumerate(PL_RATIO) if PL_MASK[0][i]]
    close(approx_kl, sum(k3) / len(k3), "approx_kl: mean of (ratio - 1) - log ratio over kept tokens")
    # Gradient: zero where the clipped term is active (t0, t1) and on masked tokens (t4);
    # elsewhere d(-A*r/5)/d(log pi) = -A*r/5.
    loss.backward()
    close(new.grad, [[0.0, 0.0, -0.5 / 5, 3.0 / 5, 0.0, -1.1 / 5]], "gradient w.r.t. the new log-probs")
    # First minibatch of an update: ratio 1, loss = -(mean advantage over kept tokens).
    same = t([[-0.3, -0.2, -0.1]])
    loss, ratio, approx_kl, clipfrac = policy_loss(same, same, t([[2.0, -1.0, 9.0]]), t([[1.0, 1.0, 0.0]]), 0.2)
    close(loss, -0.5, "ratio 1: loss is minus the mean advantage over kept tokens")
    close(approx_kl, 0.0, "ratio 1: approx_kl is 0")
    close(clipfrac, 0.0, "ratio 1: nothing is clipped")


def test_grade_policy_loss():
    check_policy_loss(real("stepcoder", "policy_loss"))


# =============================================================== 3. value_loss

def check_value_loss(value_loss):
    values = t([[1.0, 0.5, -1.0, 5.0]]).requires_grad_(True)
    old = t([[0.0, 0.4, 0.0, 0.0]])
    returns = t([[2.0, 0.0, -0.1, 0.0]])
    mask = t([[1.0, 1.0, 1.0, 0.0]])     # token 3 is padding
    loss = value_loss(values, old, returns, mask, 0.2)
    # clipped value v_c = old + clip(v - old, -.2, .2); per token max((v-R)^2, (v_c-R)^2):
    #   t0 v=1,   v_c=.2:  max(1, 3.24)   = 3.24   the clipped term is larger
    #   t1 v=.5,  v_c=.5:  .25 (inside the clip range)
    #   t2 v=-1,  v_c=-.2: max(.81, .01)  = .81    the unclipped term is larger
    #   t3 padding (would add 25)
    # 0.5 * mean over the 3 generated tokens = 0.5 * 4.3 / 3
    assert torch.is_tensor(loss) and loss.dim() == 0, "the loss must be a scalar tensor"
    close(loss, 0.5 * 4.3 / 3, "0.5 * clipped value loss averaged over generated tokens")
    # Gradient: 0 on t0 (clipped branch, saturated clamp) and on padding; (v - R) / 3 elsewhere.
    loss.backward()
    close(values.grad, [[0.0, 0.5 / 3, -0.9 / 3, 0.0]], "gradient w.r.t. the new values")
    # Within the clip range the loss is the plain 0.5 * MSE.
    loss = value_loss(t([[0.1, -0.1]]), t([[0.0, 0.0]]), t([[1.1, 0.9]]), t([[1.0, 1.0]]), 0.2)
    close(loss, 0.5, "inside the clip range: 0.5 * mean squared error")


def test_grade_value_loss():
    check_value_loss(real("stepcoder", "value_loss"))


# =============================================================== 4. fgo_mask (Sec. 3.3)

def ends_of(pieces):
    return [sum(len(p) for p in pieces[:i + 1]) for i in range(len(pieces))]


def check_fgo_mask(fgo_mask):
    def mask(*args):
        return [float(x) for x in fgo_mask(*args)]

    # The canonical prefix holds lines 1-2 (it is prompt, not tokens); the generated text starts
    # on line 3. The tests ran lines 1, 2, 3, 4, 6 and 9; line 5 never ran, 7 is a comment, 8 blank.
    pieces = ["for i in range(n):",      # 0 line 3                       ran  -> 1
              "\n    ",                  # 1 end of line 3 + indent of 4  ran  -> 1
              "if i < 0:",               # 2 line 4                       ran  -> 1
              "\n",                      # 3 the newline ENDS line 4      ran  -> 1
              "        total -= i",      # 4 line 5                       never -> 0
              "\n    total",             # 5 end of line 5 + line 6: one executed character is enough -> 1
              " += i\n",                 # 6 line 6                       ran  -> 1
              "# done\n",                # 7 line 7, a comment            -> 0
              "\n",                      # 8 line 8, blank                -> 0
              "print(total)\n",          # 9 line 9                       ran  -> 1
              ""]                        # 10 EOS: decodes to nothing, always kept -> 1
    text = "".join(pieces)
    got = mask(ends_of(pieces), text, 3, frozenset({1, 2, 3, 4, 6, 9}), 10)
    want = [1, 1, 1, 1, 0, 1, 1, 0, 0, 1, 1]
    assert len(got) == len(pieces), f"one mask entry per generated token (no prompt tokens): {len(got)} != {len(pieces)}"
    assert got == want, f"coverage mask: got {got}, want {want}"

    # Line numbers count from first_line: here the text starts on line 1 and only line 2 never ran.
    pieces = ["a = 1", "\n", "if a > 5:", "\n    b", " = 2", "\n", "print(a)\n"]
    got = mask(ends_of(pieces), "".join(pieces), 1, frozenset({1, 2, 4}), None)
    assert got == [1, 1, 1, 1, 0, 0, 1], f"token spanning lines / newline of a dead line: got {got}"
    # Same program after a 2-line prefix: the executed lines shift by 2.
    got = mask(ends_of(pieces), "".join(pieces), 3, frozenset({1, 2, 3, 4, 6}), None)
    assert got == [1, 1, 1, 1, 0, 0, 1], f"first_line=3 (after a 2-line canonical prefix): got {got}"

    # Characters past the end of the program text (cut off after a closing ``` fence) are no line.
    got = mask([9, 12, 12], "print(1)\n", 1, frozenset({1}), 2)
    assert got == [1, 0, 1], f"tokens cut off the program are masked, EOS kept: got {got}"
    # Without an EOS token (the length limit was hit) nothing is kept for free.
    got = mask([5, 6, 12], "x = 1\nx += 1\n", 1, frozenset({1}), None)
    assert got == [1, 1, 0], f"no EOS: got {got}"

    # A program that does not compile has no coverage (None): every token keeps its gradient.
    pieces = ["while x", " > 0\n", "    x -= 1\n", ""]
    got = mask(ends_of(pieces), "".join(pieces), 4, None, 3)
    assert got == [1, 1, 1, 1], f"compile error (executed_lines=None) keeps every token: got {got}"


def test_grade_fgo_mask():
    check_fgo_mask(real("stepcoder", "fgo_mask"))


# =============================================================== 5. kl_penalized_rewards (Eq. 4)

def check_kl_penalized_rewards(kl_penalized_rewards):
    logprobs = t([[-1.0, -2.0, -0.5], [-0.3, -0.2, -4.0]])
    ref = t([[-1.5, -2.0, -1.0], [-0.1, -0.7, -0.2]])
    mask = t([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])      # row 1: two tokens, then padding
    scores = t([-0.3, 1.0])                             # wrong answer; pass
    inputs = [x.clone() for x in (logprobs, ref, mask, scores)]
    rewards, kl = kl_penalized_rewards(logprobs, ref, scores, mask, 0.1)
    # kl = (log pi - log pi_ref) * mask:   row 0 [.5, 0, .5]   row 1 [-.2, .5, 0]
    # r_t = -0.1 * kl_t, + the score on the LAST GENERATED token (row 1: column 1, not 2):
    #   row 0 [-.05, 0, -.05 - .3]   row 1 [.02, -.05 + 1, 0]
    close(kl, [[0.5, 0.0, 0.5], [-0.2, 0.5, 0.0]], "kl = (logprobs - ref_logprobs) on generated tokens")
    close(rewards, [[-0.05, 0.0, -0.35], [0.02, 0.95, 0.0]], "rewards = -beta*kl, score on the last token")
    for x, x0 in zip((logprobs, ref, mask, scores), inputs):
        assert torch.equal(x, x0), "kl_penalized_rewards must not modify its inputs"


def test_grade_kl_penalized_rewards():
    check_kl_penalized_rewards(real("stepcoder", "kl_penalized_rewards"))


# =============================================================== 6. split_points, stage_prefixes (Sec. 3.2)

SPLIT_CODE = '''\
import sys
NOTE = """
if this were code it would be a split point
"""


def f(xs):
    ys = [x for x in xs if x > 0]
    z = 1 if ys else 0
    for x in ys:
        if x > 2:
            z += x
        elif x == 1:
            z -= 1
        else:
            z = 0
    while z > 100:
        z //= 2
    with open("f") as fh:
        pass
    try:
        pass
    except ValueError:
        pass
    return z


async def g(it):
    async for v in it:
        if (v and
                v > 1):
            return v


n = int(input())
print(f([n]) if n else 0)
while True:
    break
'''
# for 10, if 11, elif 13, while 17, async for 29, if 30 (its first line), while 37. Not: the
# string (3), the comprehension's for/if (8), the ternaries (9, 36), else (15), with, try, def.
SPLIT_WANT = [10, 11, 13, 17, 29, 30, 37]


def check_split_points(split_points):
    got = list(split_points(SPLIT_CODE))
    assert got == SPLIT_WANT, f"split points: got {got}, want {SPLIT_WANT} (1-based, in source order)"
    assert list(split_points("x = 1\nprint(x)\n")) == [], "no conditional statement: no split point"
    assert list(split_points("for i in range(3):\n    pass\n")) == [1], "a conditional statement on line 1"


# E = 5: K = ceil(sqrt 5) = 3 completion stages, stride S = ceil(5/3) = 2.
STAGE5 = """\
n = int(input())
a = []
for i in range(n):
    a.append(i)
if n > 3:
    a.pop()
total = 0
while a:
    total += a.pop()
if total > 10:
    total = 10
elif total < 0:
    total = 0
print(total)
"""
# conditional statements 0..4 on lines 3, 5, 8, 10, 12.
# stage 3: up to statement S*(3-1) = 4 (line 12) -> lines 1-11; stage 2: statement 2 (line 8) -> 1-7;
# stage 1: statement 0 (line 3) -> lines 1-2; stage 0: nothing.


def chain(e: int) -> str:
    """`x = 0`, then e two-line ifs: conditional statement k (0-based) is on line 2 + 2k."""
    return "x = 0\n" + "".join(f"if x == {k}:\n    x += 1\n" for k in range(e)) + "print(x)\n"


def first_lines(code: str, n: int) -> str:
    return "".join(code.splitlines(keepends=True)[:n])


def check_stage_prefixes(stage_prefixes):
    def expect(code, line_counts, what):
        got, want = list(stage_prefixes(code)), [first_lines(code, n) for n in line_counts]
        assert got == want, (f"{what}: want the first {line_counts} lines for stages K..0, got "
                             f"{[g.count(chr(10)) for g in got]} lines")

    expect(STAGE5, [11, 7, 2, 0], "E=5 (K=3, S=2)")
    expect("x = 1\nprint(x)\n", [0], "E=0: one stage, plain generation")
    expect("x = 1\ny = 2\nif x:\n    y = 3\nprint(y)\n", [2, 0], "E=1 (K=1, S=1)")
    expect(chain(2), [3, 1, 0], "E=2 (K=2, S=1): statements 1, 0 on lines 4, 2")
    expect(chain(3), [5, 1, 0], "E=3 (K=2, S=2): statements 2, 0 on lines 6, 2")
    expect(chain(10), [19, 13, 7, 1, 0], "E=10 (K=4, S=3): statements 9, 6, 3, 0 on lines 20, 14, 8, 2")


def test_grade_split_points():
    check_split_points(real("curriculum", "split_points"))


def test_grade_stage_prefixes():
    check_stage_prefixes(real("curriculum", "stage_prefixes"))


# =============================================================== 7. Curriculum.update (Algorithm 1)

def make_curriculum(alpha: float, rho_t: float):
    """Problem "p": E=4, so K=2 and it starts at stage 2; problem "q" is a bystander."""
    curriculum = importlib.import_module("curriculum")
    code = chain(4)
    problems = [curriculum.Problem(pid, "q", code, None, ["1\n"], ["1\n"], "", "introductory") for pid in "pq"]
    return curriculum.Curriculum(problems, alpha=alpha, rho_t=rho_t)


def check_curriculum_update(update):
    cur = make_curriculum(alpha=0.5, rho_t=0.6)
    assert cur.stage("p") == 2 and cur.rho["p"] == 0.0

    def step(passed, want_moved, want_stage, want_rho, stage=None):
        moved = update(cur, "p", passed, stage=stage)
        state = (cur.stage("p"), cur.rho["p"])
        assert moved is want_moved and state[0] == want_stage and state[1] == pytest.approx(want_rho), (
            f"update(passed={passed}, stage={stage}): got moved={moved}, (stage, rho)={state}; "
            f"want moved={want_moved}, ({want_stage}, {want_rho})")

    step(True, False, 2, 0.5)            # rho = .5*1 + .5*0 = .5, not above .6
    step(True, True, 1, 0.0)             # rho = .75 > .6: ONE stage toward 0 (easier -> harder), rho reset
    step(True, False, 1, 0.5)            # from the reset: .5 (without the reset: .875, it would move again)
    step(False, False, 1, 0.25)          # a failure decays rho: .5 * .5
    step(True, False, 1, 0.25, stage=2)  # a rollout generated at stage 2 is stale now: ignored
    step(True, True, 0, 0.0)             # .5 + .125 = .625 > .6: stage 0, plain generation
    for _ in range(3):
        step(True, False, 0, 0.0)        # stage 0 is the end: no stage -1
    assert (cur.stage("q"), cur.rho["q"]) == (2, 0.0), "updating one problem changed another"

    cur = make_curriculum(alpha=0.5, rho_t=0.5)
    assert update(cur, "p", True) is False and cur.stage("p") == 2, "rho = rho_t is not above rho_t: no move"
    cur = make_curriculum(alpha=0.25, rho_t=0.6)   # alpha weighs the NEW result
    update(cur, "p", True)
    update(cur, "p", False)
    assert cur.rho["p"] == pytest.approx(0.25 * 0.75), f"rho = alpha*[pass] + (1-alpha)*rho: got {cur.rho['p']}"


def test_grade_curriculum_update():
    check_curriculum_update(real("curriculum", "Curriculum.update"))


# =============================================================== 8. outputs_match (reward, Eq. 3)

MATCH_CASES = [  # (program's stdout, expected output, pass?)
    ("3\n", "3", True),                     # whitespace only separates tokens
    ("1 2\n3\n", "1 2 3", True),
    ("  7  \n\n", "7\n", True),
    ("", "", True),
    ("YES\n", "YES\n", True),
    ("2", "2.0", True),                     # numbers: equal within 1e-6 ...
    ("0.3333333", "0.333333333", True),     # ... absolute
    ("-0.5000000001", "-0.5", True),
    ("1e-9", "0", True),
    ("1000000", "1000001", False),          # two integers: exactly (1e-6 relative would pass them)
    ("007", "7", True),                     # ... as numbers
    ("0.5", "0.50001", False),              # 1e-5 apart: too far
    ("yes\n", "YES\n", False),              # no lower-casing
    ("Yes", "YES", False),
    ("3 2 1", "1 2 3", False),              # order matters (no sorting) ...
    ("1 1 2", "1 2 2", False),              # ... and multiplicity (no set)
    ("1 2", "1 2 3", False),                # a missing token
    ("1 2 3", "1 2", False),                # an extra token
    ("", "0", False),
    ("12", "1 2", False),
    ("1,2", "1 2", False),
    ("abc", "abd", False),
    ("1_000", "1000", False),               # float() accepts these, but they are not numbers
    ("infinity", "inf", False),
]


def check_outputs_match(outputs_match):
    wrong = [(got, want) for got, want, ok in MATCH_CASES if bool(outputs_match(got, want)) is not ok]
    assert not wrong, f"outputs_match is wrong on (stdout, expected): {wrong}"


def test_grade_outputs_match():
    check_outputs_match(real("sandbox", "outputs_match"))


# =============================================================== meta-tests: the checks catch wrong answers
# Each wrong answer below is a small, plausible mistake. The meta-tests use the checks above and
# these functions; of the project's code only Curriculum's constructor and, for the wrong
# stage_prefixes, split_points.

def not_implemented(*args, **kwargs):
    raise NotImplementedError


def gae_variant(bug):
    def gae(rewards, values, mask, gamma, lam):
        if bug == "gamma_lam_swapped":
            gamma, lam = lam, gamma
        adv = torch.zeros_like(rewards)
        next_adv, next_value = torch.zeros_like(rewards[:, 0]), torch.zeros_like(rewards[:, 0])
        for i in reversed(range(rewards.shape[1])):
            v_next = values[:, i] if bug == "bootstrap_from_values_t" else next_value
            delta = rewards[:, i] + gamma * v_next - values[:, i]
            next_adv = delta + (gamma if bug == "no_lambda" else gamma * lam) * next_adv
            if bug != "padding_leaks":
                next_adv = next_adv * mask[:, i]
            next_value = values[:, i] if bug == "padding_leaks" else values[:, i] * mask[:, i]
            adv[:, i] = next_adv
        return adv, adv if bug == "returns_without_values" else adv + values
    return gae


def gae_forward_time(rewards, values, mask, gamma, lam):  # accumulates in the wrong direction
    adv = torch.zeros_like(rewards)
    prev = torch.zeros_like(rewards[:, 0])
    G = rewards.shape[1]
    for i in range(G):
        v_next = values[:, i + 1] * mask[:, i + 1] if i + 1 < G else torch.zeros_like(prev)
        prev = (rewards[:, i] + gamma * v_next - values[:, i] + gamma * lam * prev) * mask[:, i]
        adv[:, i] = prev
    return adv, adv + values


def policy_loss_variant(bug):
    def policy_loss(logprobs, old_logprobs, advantages, mask, clip_coef):
        logratio = logprobs - old_logprobs
        ratio = logratio.exp()
        l1 = -advantages * ratio
        l2 = -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef)
        per_token = {"min_instead_of_max": torch.min(l1, l2), "unclipped": l1,
                     "clipped_only": l2}.get(bug, torch.max(l1, l2))
        if bug == "no_minus_sign":
            per_token = -per_token
        m = torch.ones_like(mask) if bug == "mean_over_all_tokens" else mask
        loss = (per_token * m).sum() / m.sum()
        if bug == "sum_not_mean":
            loss = (per_token * m).sum()
        approx_kl = ((ratio - 1 - logratio) * m).sum() / m.sum()
        clipfrac = (((ratio - 1).abs() > clip_coef).float() * m).sum() / m.sum()
        return loss, ratio, approx_kl.detach(), clipfrac
    return policy_loss


def value_loss_variant(bug):
    def value_loss(values, old_values, returns, mask, vf_clip):
        centre = returns if bug == "clip_around_returns" else old_values
        v_clipped = centre + (values - centre).clamp(-vf_clip, vf_clip)
        a, b = (values - returns) ** 2, (v_clipped - returns) ** 2
        per_token = {"unclipped": a, "min_instead_of_max": torch.min(a, b)}.get(bug, torch.max(a, b))
        m = torch.ones_like(mask) if bug == "mean_over_all_tokens" else mask
        half = 1.0 if bug == "no_half" else 0.5
        return half * (per_token * m).sum() / m.sum()
    return value_loss


def fgo_variant(bug):
    def fgo_mask(token_ends, text, first_line, executed_lines, eos_index):
        if executed_lines is None:
            return [0.0 if bug == "mask_all_on_compile_error" else 1.0] * len(token_ends)
        if bug == "keep_unexecuted":
            return [1.0] * len(token_ends)
        if bug == "lines_from_prompt_start":  # numbers lines as if the text started the program
            first_line = 1
        out, start = [], 0
        for i, end in enumerate(token_ends):
            chars = range(start, min(end, len(text)))
            if bug == "first_char_only":
                chars = chars[:1]
            if bug == "newline_on_next_line":  # a "\n" counted on the line it starts
                lines = {first_line + text[:j + 1].count("\n") for j in chars}
            else:
                lines = {first_line + text[:j].count("\n") for j in chars}
            keep = bool(lines & executed_lines) or (i == eos_index and bug != "mask_eos")
            out.append(1.0 if keep else 0.0)
            start = end
        return out
    return fgo_mask


def kl_variant(bug):
    def kl_penalized_rewards(logprobs, ref_logprobs, scores, mask, kl_coef):
        kl = logprobs - ref_logprobs
        if bug == "sign_flipped":
            kl = -kl
        if bug != "no_mask":
            kl = kl * mask
        rewards = -kl_coef * kl
        last = torch.full_like(scores, rewards.shape[1] - 1).long() if bug == "score_on_last_column" \
            else mask.sum(1).long() - 1
        if bug == "score_on_every_token":
            rewards = rewards + scores[:, None] * mask
        else:
            rewards[torch.arange(len(scores)), last] += scores
        return rewards, kl
    return kl_penalized_rewards


def split_points_variant(bug):
    import ast
    import re

    def split_points(code):
        if bug == "regex_on_lines":
            return [n for n, line in enumerate(code.splitlines(), 1)
                    if re.match(r"\s*(if|elif|for|while|async\s+for)\b", line)]
        if bug == "counts_else":  # the right lines, plus every `else:`
            return sorted(split_points_variant(None)(code) + [n for n, line in enumerate(code.splitlines(), 1)
                                                             if re.match(r"\s*else\s*:", line)])
        kinds = [ast.If, ast.For, ast.AsyncFor, ast.While]
        if bug == "no_async_for":
            kinds.remove(ast.AsyncFor)
        if bug == "counts_ternaries":
            kinds.append(ast.IfExp)
        lines = [node.lineno for node in ast.walk(ast.parse(code)) if isinstance(node, tuple(kinds))]
        if bug == "counts_comprehension_ifs":
            lines += [cond.lineno for node in ast.walk(ast.parse(code)) if isinstance(node, ast.comprehension)
                      for cond in node.ifs]
        if bug == "zero_based":
            lines = [n - 1 for n in lines]
        return lines if bug == "walk_order_not_sorted" else sorted(set(lines))
    return split_points


def stage_prefixes_variant(bug):
    def stage_prefixes(code):
        points = importlib.import_module("curriculum").split_points(code)
        lines = code.splitlines(keepends=True)
        if not points:
            return [""]
        E = len(points)
        K = math.floor(math.sqrt(E)) if bug == "K_floor" else math.ceil(math.sqrt(E))
        S = max(1, E // K) if bug == "S_floor" else math.ceil(E / K)
        index = (lambda c: min(S * c, E - 1)) if bug == "index_S_times_c" else (lambda c: S * (c - 1))
        keep = 0 if bug != "includes_split_line" else 1
        stages = ["".join(lines[:points[index(c)] - 1 + keep]) for c in range(K, 0, -1)]
        if bug == "hardest_first":
            return [""] + stages[::-1]
        return stages if bug == "no_stage_0" else stages + [""]
    return stage_prefixes


def update_variant(bug):
    def update(self, problem_id, passed, stage=None):
        c = self.stages[problem_id]
        if c == 0 and bug != "moves_past_0" or (stage is not None and stage != c and bug != "ignores_stale"):
            return False
        a = 1 - self.alpha if bug == "alpha_swapped" else self.alpha
        self.rho[problem_id] = a * float(passed) + (1 - a) * self.rho[problem_id]
        above = self.rho[problem_id] >= self.rho_t if bug == "ge_threshold" else self.rho[problem_id] > self.rho_t
        if above:
            self.stages[problem_id] = c + 1 if bug == "toward_harder" else c - 1
            if bug != "no_rho_reset":
                self.rho[problem_id] = 0.0
            return True
        return False
    return update


def outputs_match_variant(bug):
    import re

    def outputs_match(got, want):
        if bug == "exact_string":
            return got == want
        if bug == "strip_only":
            return got.strip() == want.strip()
        a, b = got.split(), want.split()
        if bug == "lowercase":
            a, b = [x.lower() for x in a], [x.lower() for x in b]
        if bug == "sorted":
            a, b = sorted(a), sorted(b)
        if bug == "set":
            return set(a) == set(b)
        if bug == "zip_without_length":  # zip stops at the shorter list
            return all(x == y for x, y in zip(a, b))
        tol = 1e-3 if bug == "loose_tolerance" else 1e-6

        def num(x):
            if bug != "float_everything" and not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", x):
                return None
            try:
                return float(x)
            except ValueError:
                return None
        def integers(x, y):
            return bug != "integer_tolerance" and re.fullmatch(r"[+-]?\d+", x) and re.fullmatch(r"[+-]?\d+", y)
        return a == b or bug != "tokens_only" and len(a) == len(b) and all(
            x == y or num(x) is not None and num(y) is not None and (int(x) == int(y) if integers(x, y) else
                                                                     math.isclose(num(x), num(y), rel_tol=tol, abs_tol=tol))
            for x, y in zip(a, b))
    return outputs_match


CHECKS = {"compute_gae": check_compute_gae, "policy_loss": check_policy_loss, "value_loss": check_value_loss,
          "fgo_mask": check_fgo_mask, "kl_penalized_rewards": check_kl_penalized_rewards,
          "split_points": check_split_points, "stage_prefixes": check_stage_prefixes,
          "curriculum_update": check_curriculum_update, "outputs_match": check_outputs_match}

WRONG = [("compute_gae", bug, gae_variant(bug)) for bug in
         ("bootstrap_from_values_t", "padding_leaks", "gamma_lam_swapped", "no_lambda", "returns_without_values")]
WRONG += [("compute_gae", "forward_in_time", gae_forward_time)]
WRONG += [("policy_loss", bug, policy_loss_variant(bug)) for bug in
          ("min_instead_of_max", "unclipped", "clipped_only", "no_minus_sign", "mean_over_all_tokens", "sum_not_mean")]
WRONG += [("value_loss", bug, value_loss_variant(bug)) for bug in
          ("unclipped", "min_instead_of_max", "clip_around_returns", "mean_over_all_tokens", "no_half")]
WRONG += [("fgo_mask", bug, fgo_variant(bug)) for bug in
          ("keep_unexecuted", "mask_eos", "mask_all_on_compile_error", "lines_from_prompt_start",
           "first_char_only", "newline_on_next_line")]
WRONG += [("kl_penalized_rewards", bug, kl_variant(bug)) for bug in
          ("sign_flipped", "no_mask", "score_on_last_column", "score_on_every_token")]
WRONG += [("split_points", bug, split_points_variant(bug)) for bug in
          ("regex_on_lines", "counts_else", "no_async_for", "counts_ternaries", "counts_comprehension_ifs",
           "zero_based", "walk_order_not_sorted")]
WRONG += [("stage_prefixes", bug, stage_prefixes_variant(bug)) for bug in
          ("K_floor", "S_floor", "index_S_times_c", "includes_split_line", "hardest_first", "no_stage_0")]
WRONG += [("curriculum_update", bug, update_variant(bug)) for bug in
          ("toward_harder", "no_rho_reset", "moves_past_0", "ignores_stale", "alpha_swapped", "ge_threshold")]
WRONG += [("outputs_match", bug, outputs_match_variant(bug)) for bug in
          ("exact_string", "strip_only", "lowercase", "sorted", "set", "zip_without_length", "loose_tolerance",
           "tokens_only", "float_everything", "integer_tolerance")]


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_meta_not_implemented_fails(name):
    with pytest.raises(NotImplementedError):
        CHECKS[name](not_implemented)


@pytest.mark.parametrize("name,bug,fn", WRONG, ids=[f"{name}-{bug}" for name, bug, _ in WRONG])
def test_meta_wrong_answer_fails(name, bug, fn):
    with pytest.raises(AssertionError):
        CHECKS[name](fn)


VARIANTS = {"compute_gae": gae_variant, "policy_loss": policy_loss_variant, "value_loss": value_loss_variant,
            "fgo_mask": fgo_variant, "kl_penalized_rewards": kl_variant, "split_points": split_points_variant,
            "stage_prefixes": stage_prefixes_variant, "curriculum_update": update_variant,
            "outputs_match": outputs_match_variant}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_meta_variants_without_the_bug_pass(name):
    """Each wrong answer is a right one plus its bug: without the bug, the check passes. This also
    checks the hand-computed values against an implementation written independently of the project."""
    CHECKS[name](VARIANTS[name](None))
