"""The graders of docs/ASSIGNMENTS.md: one check per function of the method.

    check_<name>(fn)   asserts fn's behaviour against values computed by hand (in the comments).

tests/test_assignments.py runs each check on the project's own function (what a student grades);
tests/test_grading.py proves that each check fails for the usual wrong answers (the answer key).
Pure functions and closed-form stand-ins (a fake language model and tokenizer): no weights, no sandbox process.
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


# =============================================================== 7. Curriculum.update (Algorithm 1)

def make_curriculum(alpha: float, rho_t: float):
    """Problem "p": E=4, so K=2 and it starts at stage 2; problem "q" is a bystander. The constructor's
    stage_prefixes is stood in for (three stages, prefixes unused), so that exercise 7 grades on its own,
    before or without exercise 6."""
    curriculum = importlib.import_module("curriculum")
    code = chain(4)
    problems = [curriculum.Problem(pid, "q", code, None, ["1\n"], ["1\n"], "", "introductory") for pid in "pq"]
    own = curriculum.stage_prefixes
    curriculum.stage_prefixes = lambda code: ["<stage 2>", "<stage 1>", ""]
    try:
        return curriculum.Curriculum(problems, alpha=alpha, rho_t=rho_t)
    finally:
        curriculum.stage_prefixes = own


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


# ======================================================= 9. logprobs_and_values (one position)

class FakeLM(torch.nn.Module):
    """A causal LM whose outputs at position t are known in closed form from the token at t and its
    position id p (nothing else): logits[v] = s * sin(1.3 token + 0.7 p + v), and the last layer's hidden
    state [h] = cos(0.9 token + 0.4 p + h). As in transformers, position ids default to 0..T-1,
    logits_to_keep=k > 0 keeps the last k positions, and hidden states come only when asked for
    (hidden_states[0] is the embedding layer's, all zeros here). s = 1 is a parameter: the log-probs
    must carry its gradient."""
    V, H = 5, 3

    def __init__(self):
        super().__init__()
        self.s = torch.nn.Parameter(torch.ones(()))

    def forward(self, input_ids, attention_mask=None, position_ids=None, output_hidden_states=False,
                logits_to_keep=0, **kwargs):
        B, T = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(T).expand(B, T)
        x = input_ids.float()[..., None]                                             # (B, T, 1)
        p = position_ids.float()[..., None]                                          # (B, T, 1)
        logits = self.s * torch.sin(1.3 * x + 0.7 * p + torch.arange(self.V).float())  # (B, T, V)
        hidden = torch.cos(0.9 * x + 0.4 * p + torch.arange(self.H).float())       # (B, T, H)
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        states = (torch.zeros_like(hidden), hidden) if output_hidden_states else None
        return type("Output", (), {"logits": logits, "hidden_states": states})()


def fake_value_head() -> torch.nn.Linear:
    head = torch.nn.Linear(FakeLM.H, 1)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[0.5, -1.0, 2.0]]))
        head.bias.fill_(0.1)
    return head


def check_logprobs_and_values(logprobs_and_values):
    # Row 0: two pad columns, prompt (3, 1), actions (2, 4), then a padded column. Row 1: prompt (2, 1, 3, 4),
    # actions (4, 2, 3). G = 3 generated columns; sampling temperature 0.7.
    ids = torch.tensor([[0, 0, 3, 1, 2, 4, 0], [2, 1, 3, 4, 4, 2, 3]])
    attention_mask = torch.tensor([[0, 0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]])
    G, temperature = 3, 0.7
    policy, value_head = FakeLM(), fake_value_head()
    inputs = (ids.clone(), attention_mask.clone())
    out = logprobs_and_values(policy, value_head, ids, attention_mask, G, temperature)
    assert len(out) == 3, "with a value head: (logprobs, entropy, values)"
    logprobs, entropy, values = out
    for x, what in ((logprobs, "logprobs"), (entropy, "entropy"), (values, "values")):
        assert tuple(x.shape) == (2, G), f"{what} must be (B, G) = (2, {G}), got {tuple(x.shape)}"
    # By hand: action j of row b is the token at column T-G+j; the state before it is column T-G+j-1,
    # whose position id counts the row's real tokens before it (left padding is not a position).
    positions = [[0, 0, 0, 1, 2, 3, 3], [0, 1, 2, 3, 4, 5, 6]]
    T = ids.shape[1]
    want_logprobs, want_entropy, want_values = torch.zeros(2, G), torch.zeros(2, G), torch.zeros(2, G)
    for b in range(2):
        for j in range(G):
            before = T - G + j - 1
            token, p = float(ids[b, before]), float(positions[b][before])
            logits = torch.tensor([math.sin(1.3 * token + 0.7 * p + v) for v in range(FakeLM.V)]) / temperature
            logp = torch.log_softmax(logits, -1)
            want_logprobs[b, j] = logp[ids[b, before + 1]]
            want_entropy[b, j] = -(logp.exp() * logp).sum()
            want_values[b, j] = sum(w * math.cos(0.9 * token + 0.4 * p + h) for h, w in enumerate([0.5, -1.0, 2.0])) + 0.1
    actions = attention_mask[:, -G:].bool()  # the padded column's outputs are never used: not graded
    close(logprobs[actions], want_logprobs[actions],
          "log-probs (the logits that predict action t are those of the position before it, divided by the "
          "temperature; left padding must not shift the positions)", atol=1e-5)
    close(entropy[actions], want_entropy[actions], "entropy of the distribution each action was drawn from",
          atol=1e-5)
    close(values[actions], want_values[actions],
          "values: V(s_t) is read from the last hidden state of the position before action t", atol=1e-5)
    assert logprobs.requires_grad, "the log-probs must carry the policy's gradient (the update needs it)"
    logprobs.sum().backward()
    assert policy.s.grad is not None and policy.s.grad != 0, "the log-probs must carry the policy's gradient"
    assert values.requires_grad, "the values must carry the value head's gradient"
    values.sum().backward()
    assert value_head.weight.grad is not None, "the values must carry the value head's gradient"
    assert torch.equal(ids, inputs[0]) and torch.equal(attention_mask, inputs[1]), "inputs must not be modified"
    # The reference pass: no value head, so no values.
    out = logprobs_and_values(FakeLM(), None, ids, attention_mask, G, temperature)
    assert len(out) == 2, "without a value head: (logprobs, entropy) only"
    close(out[0][actions], want_logprobs[actions], "log-probs without a value head", atol=1e-5)


# ======================================================================= 10. whiten (a mask)

def check_whiten(whiten):
    # The tokens in the mask are 1, 2, 3 (row 0) and 4 (row 1): mean 2.5, variance
    # (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25, std 1.1180. The 9s are padding.
    x = t([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0]])
    mask = t([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    inputs = (x.clone(), mask.clone())
    out = whiten(x, mask)
    std = math.sqrt(1.25)
    close(out[mask.bool()], [-1.5 / std, -0.5 / std, 0.5 / std, 1.5 / std],
          "whitened tokens: (x - mean) / std with the mean and variance over the tokens in the mask only, "
          "all rows together (the padding's 9s must not count)", atol=1e-5)
    close(out[~mask.bool()], [0.0] * 4, "padding must be 0 after whitening")
    assert torch.equal(x, inputs[0]) and torch.equal(mask, inputs[1]), "whiten must not modify its inputs"
    # Equal values in the mask: the variance is 0, and the result must be 0, not nan or inf.
    out = whiten(t([[5.0, 5.0, 7.0], [5.0, 9.0, 9.0]]), t([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    close(out, [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], "equal values: all 0 (add a small epsilon to the variance)")
    # A second example: mask 0 on a whole row. Tokens 2, 4, 6, 8: mean 5, variance 5.
    out = whiten(t([[2.0, 4.0, 6.0, 8.0], [1.0, 1.0, 1.0, 1.0]]), t([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
    close(out, [[-3 / math.sqrt(5), -1 / math.sqrt(5), 1 / math.sqrt(5), 3 / math.sqrt(5)], [0.0] * 4],
          "a row without tokens takes no part and stays 0", atol=1e-5)


# ============================================== 11. response_length and program_text (the end)

class FakeTokenizer:
    """Token id -> text. 99 is EOS (its text goes when special tokens are skipped). A chat model's tokenizer
    has a chat template; a base model's has none. BPE merges characters freely, so the closing fence may
    come as "```", as "\\n```", or split as "\\n``" + "`"."""
    eos_token_id = 99
    PIECES = {0: "a", 1: "\n", 2: "```", 3: "\n```", 4: "b", 5: "print(1)", 6: "\n``", 7: "`", 8: "\nprint(2)",
              9: "s = '```'", 99: "<|EOT|>"}

    def __init__(self, chat: bool):
        self.chat_template = "{{ messages }}" if chat else None

    def decode(self, ids, skip_special_tokens=False):
        return "".join("" if i == self.eos_token_id and skip_special_tokens else self.PIECES[i] for i in ids)


# (chat model?, response ids, number of actions, the scored program)
END_CASES = [
    (True, [0, 1, 2, 4, 4], 2, "a\n"),               # "a", "\n", then the fence: 2 actions
    (True, [0, 3, 4], 2, "a\n"),                     # the token "\n```" holds the program's last "\n": an action
    (True, [5, 6, 7, 8, 99], 2, "print(1)\n"),       # the fence split "\n``" + "`": the actions end with "\n``"
    (True, [2, 0], 1, ""),                           # an empty program: the reward lands on the fence token
    (True, [0, 0, 99, 0], 3, "aa"),                  # no fence: up to and including EOS
    (True, [0, 99, 2, 4], 2, "a"),                   # nothing after EOS counts, not even a fence
    (True, [0, 4], 2, "ab"),                         # neither fence nor EOS: all of it
    (False, [0, 2, 4, 99, 0], 4, "a```b"),           # a base model: EOS alone ends it ...
    (False, [9, 1, 0, 99, 4], 4, "s = '```'\na"),    # ... and a fence is text like any other
    (False, [99], 1, ""),
]


def check_response_length(response_length):
    wrong = [(chat, ids, response_length(FakeTokenizer(chat), list(ids)), n)
             for chat, ids, n, _ in END_CASES if response_length(FakeTokenizer(chat), list(ids)) != n]
    assert not wrong, ("response_length is wrong on (chat model?, response ids, got, want); pieces "
                       f"{FakeTokenizer.PIECES}: {wrong}")


def check_program_text(program_text):
    wrong = [(chat, ids, program_text(FakeTokenizer(chat), list(ids)), program)
             for chat, ids, _, program in END_CASES if program_text(FakeTokenizer(chat), list(ids)) != program]
    assert not wrong, ("program_text is wrong on (chat model?, response ids, got, want); pieces "
                       f"{FakeTokenizer.PIECES}: {wrong}")


# ======================================================= 12. group_advantages (GRPO, beside PPO)

def check_group_advantages(group_advantages):
    # 12 rollouts in groups of 4 (a problem's samples are consecutive rows), 3 action tokens at most.
    # Group A (1, -0.3, -0.3, -0.3): mean 0.025, deviations 0.975 and -0.325 (x3), squares 0.950625 and
    #   0.105625 (x3) = 1.2675, / (4 - 1) = 0.4225, std 0.65: advantages 0.975 / 0.6501, -0.325 / 0.6501.
    # Group B (1, 1, 1, 1): all equal, std 0: 0 on every token (the epsilon keeps 0 / 0 away).
    # Group C (-1, -0.6, -0.6, 1): mean -0.3, deviations -0.7, -0.3, -0.3, 1.3, squares 2.36, / 3, std 0.886942.
    scores = t([1.0, -0.3, -0.3, -0.3, 1.0, 1.0, 1.0, 1.0, -1.0, -0.6, -0.6, 1.0])
    lengths = [2, 3, 3, 1, 3, 3, 3, 3, 1, 2, 3, 3]  # a row's action tokens; the rest is padding
    mask = t([[1.0] * n + [0.0] * (3 - n) for n in lengths])
    inputs = (scores.clone(), mask.clone())
    out = group_advantages(scores, 4, mask)
    std_c = math.sqrt(2.36 / 3)
    per_row = [0.975 / 0.6501] + [-0.325 / 0.6501] * 3 + [0.0] * 4 + \
              [d / (std_c + 1e-4) for d in (-0.7, -0.3, -0.3, 1.3)]
    want = [[a if k < n else 0.0 for k in range(3)] for a, n in zip(per_row, lengths)]
    close(out, want, "advantages: (reward - the group's mean) / (the group's std (n - 1) + 1e-4), the same on every "
          "action token of the rollout, 0 on padding; mean and std over each group of 4 rows only, one value per "
          "rollout (not per token)", atol=1e-5)
    assert torch.equal(scores, inputs[0]) and torch.equal(mask, inputs[1]), "group_advantages must not modify its inputs"
    # Groups of 2: (1, -1): mean 0, std sqrt 2 -> +-1 / (1.414214 + 1e-4); (-0.3, -0.3): 0.
    out = group_advantages(t([1.0, -1.0, -0.3, -0.3]), 2, t([[1.0], [1.0], [1.0], [1.0]]))
    a = 1 / (math.sqrt(2) + 1e-4)
    close(out, [[a], [-a], [0.0], [0.0]], "groups of 2: (1, -1) gives +-1 / (sqrt 2 + 1e-4), an all-equal group 0",
          atol=1e-5)


CHECKS = {"compute_gae": check_compute_gae, "policy_loss": check_policy_loss, "value_loss": check_value_loss,
          "fgo_mask": check_fgo_mask, "kl_penalized_rewards": check_kl_penalized_rewards,
          "split_points": check_split_points, "stage_prefixes": check_stage_prefixes,
          "curriculum_update": check_curriculum_update, "outputs_match": check_outputs_match,
          "logprobs_and_values": check_logprobs_and_values, "whiten": check_whiten,
          "response_length": check_response_length, "program_text": check_program_text,
          "group_advantages": check_group_advantages}
