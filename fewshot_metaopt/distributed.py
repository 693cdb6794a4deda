"""Meta-training over a ``torch.distributed`` process group (launched by ``torchrun``).

Every rank is handed the same whole meta-batch (the samplers are seeded alike, so they draw
the same stream) and adapts its contiguous share of it; the meta-gradients are summed across
ranks in one bucketed all-reduce, each rank's weighted by the tasks it kept, and every rank
takes the identical outer step. So an N-process run sees the episodes a 1-process run with
the same seed and meta-batch sees, and its meta-gradient is the same mean over the same
tasks; only the order of floating-point summation differs (float32: agreement to about 1e-6
relative per step, growing slowly over steps).

Evaluation is sharded the same way, and every episode's score gathered back in order, so a
score per episode equals the 1-process one. Warp-Grad's trajectory points are gathered into
every rank's replay buffer in the same order, so every rank samples the points one process
would (and computes the warp objective over them alike).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterable, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

T = TypeVar("T")

# How long a rank waits for the others in a collective before it gives up with an error (a
# rank that died leaves the rest waiting; torch's default is 30 minutes).
DEFAULT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class MetaBatchGroup:
    """The ranks that share a meta-batch: ``group`` (None: the default group), this process's
    ``rank`` and the ``world_size``."""

    rank: int
    world_size: int
    group: Any = None

    @classmethod
    def current(cls, group: Any = None) -> "MetaBatchGroup":
        """The group of the initialised default process group (or ``group``)."""
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: call init_process_group first "
                               "(torchrun sets the environment for it)")
        return cls(dist.get_rank(group), dist.get_world_size(group), group)

    def share(self, items: Sequence[T], what: str = "meta-batch") -> list[T]:
        """This rank's contiguous share of ``items``, whose number must divide evenly."""
        items = list(items)
        if len(items) % self.world_size:
            raise ValueError(f"a {what} of {len(items)} does not divide over {self.world_size} processes; "
                             f"make it a multiple of {self.world_size}")
        size = len(items) // self.world_size
        return items[self.rank * size:(self.rank + 1) * size]

    def strided(self, items: Sequence[T]) -> list[T]:
        """Every ``world_size``-th item from this rank's index (any number of items)."""
        return list(items)[self.rank::self.world_size]

    def reduce_mean_gradient(self, parameters: Iterable[Tensor], kept: int, sums: Sequence[float] = ()) -> tuple[int, list[float]]:
        """Make every ``.grad`` the mean over all ranks' kept tasks: each rank's gradient (a mean
        over its own ``kept`` tasks) is weighted by ``kept``, summed with the others in one
        all-reduce, and divided by the total kept. ``sums`` (per-rank totals, e.g. of losses)
        ride along in the same all-reduce; returns the total kept and the summed ``sums``."""
        params = list(parameters)
        if not params:
            raise ValueError("no parameters to reduce")
        reference = params[0]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        # Which parameters have a gradient anywhere: one without any keeps ``None``, as alone
        # (an optimizer skips it; a zero gradient would still move Adam's moments).
        present = [float(p.grad is not None) for p in params]
        counts = torch.tensor([float(kept), *sums, *present], dtype=reference.dtype, device=reference.device)
        flat = _flatten_dense_tensors([g * kept for g in grads] + [counts])
        dist.all_reduce(flat, group=self.group)
        *summed, totals = _unflatten_dense_tensors(flat, grads + [counts])
        total_kept = int(round(float(totals[0])))
        anywhere = totals[1 + len(sums):]
        for p, g, has in zip(params, summed, anywhere):
            p.grad = None if float(has) == 0 else (g / total_kept if total_kept else g)
        return total_kept, [float(t) for t in totals[1:1 + len(sums)]]

    def gather(self, local: list[T], total: int) -> list[T]:
        """The items of every rank's :meth:`strided` share, back in their original order."""
        out: list[T] = [None] * total  # type: ignore[list-item]
        for rank, share in enumerate(self.gather_all(local)):
            out[rank::self.world_size] = share
        return out

    def gather_all(self, local: T) -> list[T]:
        """Every rank's ``local``, in rank order, on every rank."""
        shares: list[Any] = [None] * self.world_size
        dist.all_gather_object(shares, local, group=self.group)
        return shares

    def broadcast(self, value: T, source: int = 0) -> T:
        """``value`` of rank ``source``, on every rank."""
        box = [value]
        dist.broadcast_object_list(box, src=source, group=self.group)
        return box[0]

    def barrier(self) -> None:
        dist.barrier(group=self.group)


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by ``torchrun`` (or any launcher that
    sets ``WORLD_SIZE`` and ``RANK``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_environment(device: torch.device, timeout_s: float | None = None) -> MetaBatchGroup:
    """Initialise the default process group from torchrun's environment: gloo on the CPU, nccl
    on CUDA (each process on the GPU its ``LOCAL_RANK`` names). ``timeout_s`` (default:
    ``$FEWSHOT_METAOPT_DIST_TIMEOUT_S``, else 120 s) bounds every wait for the other ranks, the
    rendezvous included; a rank that cannot reach them is a one-line ``ConnectionError``."""
    if timeout_s is None:
        timeout_s = float(os.environ.get("FEWSHOT_METAOPT_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":  # pragma: no cover - needs GPUs
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE") if name not in os.environ]
    if missing:
        raise ConnectionError(f"the environment lacks {', '.join(missing)}: start the processes with torchrun "
                              "(or fewshot-metaopt train --nproc N)")
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend=backend, store=_attempt_store(timeout_s),
                                    rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                                    timeout=timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as err:  # torch reports a failed rendezvous as several types
            where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            raise ConnectionError(
                f"rank {os.environ.get('RANK')} of {os.environ.get('WORLD_SIZE')} could not meet the others at {where} "
                f"within {timeout_s:g} s ({type(err).__name__}); check that every process was started and can "
                "reach that address"
            ) from None
    return MetaBatchGroup.current()


def _attempt_store(timeout_s: float) -> dist.Store:
    """The rendezvous store, its keys prefixed with torchrun's restart count: a group that
    ``torchrun --max-restarts`` starts again shares the store with the attempt that failed,
    whose stale addresses (of processes now dead) would otherwise be read as the new ones."""
    agent_hosts_it = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "False") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), int(os.environ["WORLD_SIZE"]),
                          is_master=not agent_hosts_it and int(os.environ["RANK"]) == 0,
                          timeout=timedelta(seconds=timeout_s))
    return dist.PrefixStore(f"fewshot-metaopt/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
