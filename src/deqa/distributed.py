"""Running deqa on N processes: what the launcher started, and no silent one-process launches.

**What starts N processes.** Training and ``deqa score`` read the launch from the environment
that torch's elastic launcher (``torchrun``, ``deqa launch``, ``accelerate launch --multi_gpu`` or
with ``configs/accelerate/ddp.yaml``) gives every process: ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` (MPI launchers' ``PMI_*``/``OMPI_COMM_WORLD_*`` too). On a machine without CUDA
the ranks are put on CPU (``accelerate.Accelerator(cpu=True)``: gloo, ``MULTI_CPU``) where
accelerate alone would give every process a single-process state of its own.

**What gives one process while N were asked for** (and is refused by :func:`check_processes`
with a one-line :class:`LaunchError` naming the fix):

- ``accelerate launch --cpu --num_processes N`` (and any accelerate config with ``use_cpu: true``
  or ``distributed_type: MULTI_CPU``): accelerate 1.x sends every CPU launch to its *simple
  launcher* (``accelerate.commands.launch.launch_command``: each multi-process launcher is gated
  on ``not args.cpu``), which starts **one** process unless ``--mpirun_hostfile`` hands it to
  ``mpirun``; it still sets ``MASTER_ADDR``/``MASTER_PORT`` (only when N > 1) and
  ``ACCELERATE_USE_CPU``, but no ``WORLD_SIZE``. The same holds for ``accelerate launch
  --num_processes N`` without ``--multi_gpu`` on a machine with fewer than two GPUs;
- a launcher that set ``WORLD_SIZE`` > 1 but whose processes did not join one process group.

``DEQA_ALLOW_ONE_PROCESS=1`` turns the error into a warning (a job script that sets
``MASTER_ADDR`` for other reasons).

**Shares.** :class:`RoundBatches` (training: whole rounds of N batches, so that accelerate's
round-robin sharding gives each rank a disjoint share of the epoch's pairs), :func:`strided_share` (validation: ranks take every N-th image, padded so every rank
runs the same number of forward passes) and :func:`block` (a contiguous block of a sorted list:
``deqa score --shard I/N`` and scoring on N ranks).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
LOCAL_RANK_VARS = ("LOCAL_RANK", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK")
ALLOW_ENV = "DEQA_ALLOW_ONE_PROCESS"
STATUS_ENV = "DEQA_LAUNCH_STATUS"
"""Set by ``deqa launch`` for its ranks: rank 0 of ``deqa score`` writes its exit code to that file
and exits 0 (torchrun reports any non-zero exit as a failed worker); ``deqa launch`` exits with it."""
FIX = "start the processes with `deqa launch -n N ...` or `torchrun --nproc_per_node N ...` (see docs/distributed.md)"


class LaunchError(RuntimeError):
    """A launch that would run one process where several were asked for."""


def _int(env: Mapping[str, str], keys: tuple[str, ...], default: int) -> int:
    for k in keys:
        try:
            value = int(env.get(k, ""))
        except ValueError:
            continue
        if value >= 0:
            return value
    return default


@dataclass(frozen=True)
class Launch:
    """This process's place in the launch, as the launcher's environment says (1 process if none)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def multi(self) -> bool:
        return self.world > 1


def launch_info(env: Mapping[str, str] | None = None) -> Launch:
    """The rank, world size and local rank the launcher set (``Launch()`` outside a launcher)."""
    env = os.environ if env is None else env
    world = _int(env, SIZE_VARS, 1)
    rank = _int(env, RANK_VARS, 0)
    if world > 1 and not 0 <= rank < world:
        raise LaunchError(f"the launcher set rank {rank} of {world} processes")
    return Launch(rank, max(world, 1), _int(env, LOCAL_RANK_VARS, rank))


def requested_processes(env: Mapping[str, str] | None = None) -> int | None:
    """How many processes the launcher was asked for where that is more than one (else ``None``).

    ``-1``: more than one, count unknown (accelerate's simple launcher keeps it to itself).
    """
    env = os.environ if env is None else env
    world = _int(env, SIZE_VARS, 1)
    if world > 1:
        return world
    if "ACCELERATE_USE_CPU" in env and env.get("MASTER_ADDR") and world <= 1 and "RANK" not in env:
        return -1  # accelerate's simple launcher: MASTER_ADDR is set only for num_processes > 1
    return None


def check_processes(running: int, env: Mapping[str, str] | None = None) -> None:
    """Raise :class:`LaunchError` where ``running`` processes are fewer than the launch asked for."""
    env = os.environ if env is None else env
    asked = requested_processes(env)
    if asked is None:
        return
    if running > 1:
        if asked > 0 and running != asked:
            raise LaunchError(f"the launcher started {asked} processes but {running} joined the process group")
        return
    if asked == -1:
        why = (
            "`accelerate launch` was asked for several processes but started one: on CPUs (--cpu, use_cpu, "
            "MULTI_CPU) and without --multi_gpu, accelerate 1.x uses its simple launcher, which starts a "
            "single process (it needs --mpirun_hostfile for more)"
        )
    else:
        why = f"the launcher set WORLD_SIZE={asked} but this process runs alone (no process group)"
    if env.get(ALLOW_ENV, "") not in ("", "0"):
        log.warning("%s; going on with one process (%s is set)", why, ALLOW_ENV)
        return
    raise LaunchError(f"{why}; {FIX} (or set {ALLOW_ENV}=1 to run one process anyway)")


def use_cpu_ranks(env: Mapping[str, str] | None = None) -> bool:
    """Whether a multi-process launch must be put on CPU ranks (gloo): no CUDA device is visible."""
    return launch_info(env).multi and not torch.cuda.is_available()


def describe(state) -> str:
    """One log line of this process's place: ``rank 1 of 2 (MULTI_CPU, gloo, cpu)``."""
    kind = str(state.distributed_type).rpartition(".")[2]
    return (
        f"rank {state.process_index} of {state.num_processes} ({kind}, {state.backend or 'no backend'}, {state.device})"
    )


def strided_share(n: int, rank: int, world: int) -> list[int]:
    """Indices ``rank, rank + world, ...`` of ``0..n-1``, padded with the last one to ``ceil(n / world)``.

    Every rank then runs the same number of forward passes (DeepSpeed ZeRO-3 needs it); the
    shares together cover every index.
    """
    share = list(range(rank, n, world)) or [0]
    return share + share[-1:] * (math.ceil(n / world) - len(share))


def block(n: int, index: int, count: int) -> range:
    """The ``index``-th of ``count`` contiguous blocks of ``0..n-1`` (sizes differ by at most one)."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: the index must be in 0..{count - 1}")
    return range(index * n // count, (index + 1) * n // count)


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``; ``ValueError`` with a one-line reason otherwise."""
    left, sep, right = text.partition("/")
    try:
        index, count = int(left), int(right)
    except ValueError:
        index = count = -1
    if not sep or count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {text!r}: use I/N with 0 <= I < N, e.g. 0/4 (the first of four shards)")
    return index, count


class RoundBatches(torch.utils.data.BatchSampler):
    """Batches of ``0..n-1`` in order, cut to a whole number of rounds of ``processes`` batches.

    accelerate's ``BatchSamplerShard`` deals batch ``i`` to rank ``i % processes`` and, where the
    last round is short, tops it up with batches from the start of the epoch (``even_batches``),
    so some pairs would be trained twice in an epoch, on two ranks. Cut to whole rounds, every rank
    gets ``len // processes`` batches and the ranks' pairs are disjoint; the pairs left out are a
    different random few every epoch (the pair order is redrawn per epoch).
    """

    def __init__(self, n: int, batch_size: int, drop_last: bool, processes: int):
        super().__init__(torch.utils.data.SequentialSampler(range(n)), batch_size, drop_last)
        self.processes = processes
        if len(self) == 0:
            raise ValueError(
                f"{n} training pairs make {super().__len__()} batch(es) of {batch_size} pairs: "
                f"{processes} processes need at least {processes}; lower train.batch_pairs or the processes"
            )

    def __len__(self) -> int:
        return super().__len__() // self.processes * self.processes

    def __iter__(self):
        return itertools.islice(super().__iter__(), len(self))
