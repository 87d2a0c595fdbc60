"""Data-parallel meta-training over ``torch.distributed`` (one process per rank, via torchrun).

Every rank draws the whole meta-batch of step k from the same seeded generator as a single
process and keeps its contiguous slice of the task dimension. The meta-loss is a mean over
tasks, so each rank scales its local mean by local_tasks / meta_batch: the SUM all-reduce of
the gradients (and of the loss value) is then exactly the single-process mean over the whole
meta-batch, and clipping, schedules and Adam run on identical numbers on every rank. The
numbers therefore do not depend on the number of processes (up to float summation order).
Rank 0 alone writes (config, metrics, checkpoints, tracking) and meta-validates; the others
wait for it in the next collective.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from metaplastic.errors import ConfigError, MetaplasticError
from metaplastic.tasks import Episodes

# Rank 0 validates and writes checkpoints while the others wait in the next all-reduce.
TIMEOUT = timedelta(minutes=60)
REPORTED_EXIT = 2  # a worker that printed its own one-line error exits with this (the CLI's code)


class RankError(ConfigError):
    """An error only this rank sees (e.g. its GPU is missing): it reports it itself."""


class LaunchError(MetaplasticError):
    """A training process of ``--nproc`` died without reporting an error of its own."""


def environment() -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) set by torchrun, or None outside it."""
    if "WORLD_SIZE" not in os.environ:
        return None
    try:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    except (KeyError, ValueError):
        raise ConfigError("torchrun environment is incomplete: RANK and WORLD_SIZE must be integers") from None


def check_divisible(meta_batch: int, world_size: int) -> None:
    """Every rank must own the same number of tasks, or the scaled gradients would not add up."""
    if meta_batch % world_size:
        raise ConfigError(
            f"meta.meta_batch ({meta_batch}) must be divisible by the number of processes ({world_size})"
        )


@dataclass(frozen=True)
class Parallel:
    """This process's place in the group, and the collectives the meta-step needs."""

    rank: int
    world_size: int
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def task_slice(self, meta_batch: int) -> slice:
        """The contiguous tasks of a meta-batch that this rank computes."""
        check_divisible(meta_batch, self.world_size)
        n = meta_batch // self.world_size
        return slice(self.rank * n, (self.rank + 1) * n)

    def shard(self, episodes: Episodes) -> Episodes:
        """This rank's tasks of a full meta-batch (task dimension first in every tensor)."""
        return episodes.tasks(self.task_slice(episodes.x.shape[0]))

    def loss_weight(self, meta_batch: int) -> float:
        """local tasks / meta_batch: the factor that makes summed local means a global mean."""
        part = self.task_slice(meta_batch)
        return (part.stop - part.start) / meta_batch

    def sum_(self, tensors: Sequence[Tensor]) -> None:
        """All-reduce SUM in place, as one flat buffer (one collective for all gradients)."""
        if not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def sum_value(self, value: Tensor) -> float:
        """The SUM over ranks of a scalar, identical on every rank (so all raise together)."""
        buf = value.detach().reshape(1).clone()
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return float(buf)

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def setup(device: str) -> Parallel | None:
    """Join torchrun's process group: gloo on the CPU, nccl on CUDA with GPU LOCAL_RANK.
    None outside torchrun or with a single process (the plain single-process path)."""
    env = environment()
    if env is None or env[1] == 1:
        return None
    rank, world, local_rank = env
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is not None:
            raise ConfigError(
                f"with {world} processes the device must be 'cuda' (rank r uses cuda:LOCAL_RANK), got '{device}'"
            )
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if local_rank >= count:
            raise RankError(f"rank {rank} needs GPU cuda:{local_rank}, this machine has {count}")
        torch.cuda.set_device(local_rank)  # "cuda" then means this rank's GPU everywhere
        backend = "nccl"
    elif dev.type == "cpu":
        backend = "gloo"
    else:
        raise ConfigError(f"data-parallel training supports devices cpu (gloo) and cuda (nccl), got '{device}'")
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed")
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=TIMEOUT)
    return Parallel(rank, world, local_rank)


@contextmanager
def one_report() -> Iterator[None]:
    """Under torchrun every rank meets the same config or divergence error: rank 0 prints it,
    the others exit with the same status silently (RankError: the rank that saw it reports)."""
    try:
        yield
    except MetaplasticError as e:
        env = environment()
        if env is not None and env[0] != 0 and not isinstance(e, RankError):
            raise SystemExit(REPORTED_EXIT) from None
        raise


def launch(nproc: int, argv: list[str], meta_batch: int, device: str) -> None:
    """Run ``metaplastic`` with ``argv`` in ``nproc`` processes through torchrun (in this process,
    standalone rendezvous on a free local port). Checks what it can before starting anything."""
    if environment() is not None:
        raise ConfigError("--nproc starts its own processes: drop it when running under torchrun")
    check_divisible(meta_batch, nproc)
    dev = torch.device(device)
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if dev.index is not None or count < nproc:
            raise ConfigError(f"--nproc {nproc} on '{device}' needs device 'cuda' and {nproc} GPUs, found {count}")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torchrun's agent logs every failure at length; the workers report theirs in one line
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    logging.getLogger("torch.distributed.run").setLevel(logging.ERROR)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    launcher = ["--standalone", "--nproc-per-node", str(nproc), "-m", "metaplastic", *argv]
    try:
        run(parse_args(launcher))
    except ChildFailedError as e:
        codes = {rank: f.exitcode for rank, f in e.failures.items()}
        reported = codes.get(0) == REPORTED_EXIT or (0 not in codes and set(codes.values()) == {REPORTED_EXIT})
        if reported:  # rank 0 (or the only failing ranks, RankError) printed the error line
            raise SystemExit(REPORTED_EXIT) from None
        rank, failure = e.get_first_failure()
        raise LaunchError(f"training process rank {rank} {_describe_exit(failure.exitcode)}") from None
    except SignalException:  # Ctrl-C: the workers print their own "interrupted" line
        raise SystemExit(130) from None


def _describe_exit(code: Any) -> str:
    if isinstance(code, int) and code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"was killed by signal {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    return f"exited with status {code}"
