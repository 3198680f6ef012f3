"""Data-parallel PPO under torchrun: the few collective operations stepcoder.py needs. Plumbing, not the method.

    torchrun --nproc_per_node 2 stepcoder.py --model tiny   # two ranks; `python stepcoder.py` is one

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; with WORLD_SIZE unset every helper here is the identity, so one
process runs exactly the program it always was. Each rank holds the whole model, takes its share of the step's
problems, and generates, scores and computes advantages on its own rollouts; the trainable parameters' gradients
are averaged across ranks before every optimizer step (an explicit all-reduce: shorter than DDP around a peft
model), so every rank holds the same adapter and value head. Rank 0 alone writes the run directory and prints.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from support.config import UsageError


def world() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def is_main() -> bool:
    """Rank 0 (or the only process): it writes files and prints; the others stay quiet."""
    return rank() == 0


def init() -> torch.device:
    """Several ranks: join the process group, NCCL on cuda:LOCAL_RANK or gloo on the CPU. -> this rank's device"""
    if world() == 1:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():  # rank 0 evaluates alone while the others wait: a long timeout
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=2))
    return device


def finish() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if world() > 1:
        dist.barrier()


def share(items: list) -> list:
    """This rank's part of the step's problems, drawn alike on every rank: every world()-th one from its rank on.
    An uneven split would give ranks different numbers of minibatches (and all-reduces), so it is refused."""
    if len(items) % world():
        raise UsageError(f"{len(items)} problems per step do not split evenly over {world()} processes: "
                         f"pass --problems-per-step as a multiple of {world()}")
    return items[rank()::world()]


def sandbox_workers() -> int:
    """Sandbox processes for this rank: its share of the machine's cores (all of them in a single process)."""
    return max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def own_rng() -> None:
    """Torch's RNG (sampling, minibatch order) per rank. Rank 0 keeps its state: seeded with --seed, or restored
    from the checkpoint, which holds rank 0's. Rank r > 0 re-seeds from a number drawn from its state at this
    point (on a resume: rank 0's saved state) plus r: its own stream, the same on every run or resume of a
    checkpoint, whatever the number of ranks that wrote it."""
    if rank() > 0:
        torch.manual_seed(int(torch.randint(2 ** 62, ())) + rank())


def broadcast_params(params: list) -> None:
    """Rank 0's values of the trainable parameters on every rank (the same seed gives the same init; this makes
    sure, and carries a warm start that rank 0 alone ran)."""
    if world() > 1:
        for p in params:
            dist.broadcast(p.data, src=0)


def all_reduce_grads(params: list) -> None:
    """Average the gradients across ranks, in one flat buffer: every rank then takes the same optimizer step."""
    if world() > 1:
        flat = torch.cat([p.grad.flatten() for p in params])  # the loss reaches every trainable parameter
        dist.all_reduce(flat)
        flat /= world()
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad = g.view_as(p).to(p.dtype)


def agree(flag: bool) -> bool:
    """True on every rank iff it is true on every rank (e.g. a minibatch's loss is finite everywhere)."""
    if world() == 1:
        return flag
    every = torch.tensor(int(flag), device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(every, op=dist.ReduceOp.MIN)
    return bool(every)


def gather(obj) -> list:
    """Every rank's `obj` (picklable; tensors on the CPU), in rank order: [obj] in a single process."""
    if world() == 1:
        return [obj]
    objects = [None] * world()
    dist.all_gather_object(objects, obj)
    return objects


def gather_rows(tensors: dict, device) -> dict:
    """Every rank's rollout tensors, concatenated along the rows in rank order; (N, G) ones are right-padded with
    zeros to the widest G (the masks are 0 there). The tensors themselves in a single process."""
    if world() == 1:
        return tensors
    ranks = gather({name: t.cpu() for name, t in tensors.items()})
    width = {name: max(r[name].shape[-1] for r in ranks) for name in tensors}
    def pad(t, name):  # a (B, G) tensor to the widest G
        return torch.nn.functional.pad(t, (0, width[name] - t.shape[-1])) if t.dim() == 2 else t
    return {name: torch.cat([pad(r[name], name) for r in ranks]).to(device) for name in tensors}
