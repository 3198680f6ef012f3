"""Test-side wrapper of stepcoder.train for tests/test_distributed.py, run under torchrun. After every PPO update
each rank records its adapter, value head, curriculum, the update's statistics and its rollouts' returns, values
and mask; and the (problem id, verdict) of every rollout it scored. It saves them to OUT/rank<r>.pt at the end.
Nothing in stepcoder.py knows about it.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/rank_dump.py OUT STEPCODER_FLAGS...
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

import curriculum  # noqa: E402
from support import distributed  # noqa: E402
import stepcoder  # noqa: E402

out, steps, scored, curricula = Path(sys.argv[1]), [], [], []

real_init = curriculum.Curriculum.__init__
def init(self, *args, **kwargs):  # remember the run's curriculum
    real_init(self, *args, **kwargs)
    curricula.append(self)
curriculum.Curriculum.__init__ = init

real_update = stepcoder.ppo_update
def ppo_update(policy, value_head, optimizer, params, rollouts, *args, **kwargs):  # the update, then a copy of its result
    stats = real_update(policy, value_head, optimizer, params, rollouts, *args, **kwargs)
    steps.append({"adapter": {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad},
                  "value_head": {n: t.clone() for n, t in value_head.state_dict().items()},
                  "curriculum": curricula[-1].state_dict(), "stats": stats,
                  **{name: rollouts[name].clone() for name in ("returns", "values", "mask")}})
    return stats
stepcoder.ppo_update = ppo_update

real_sandbox = stepcoder.sandbox_results
def sandbox_results(programs, problems, cfg):
    results = real_sandbox(programs, problems, cfg)
    scored.append([(p.problem_id, r.status) for p, r in zip(problems, results)])
    return results
stepcoder.sandbox_results = sandbox_results

rank = distributed.rank()
stepcoder.train(stepcoder.parse_config(sys.argv[2:]))
torch.save({"steps": steps, "scored": scored}, out / f"rank{rank}.pt")
