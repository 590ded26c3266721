"""``deqa launch``: start N processes of a stage script or a ``deqa`` command, on CPUs or GPUs.

A thin front door over torch's elastic launcher (``python -m torch.distributed.run``, the code of
``torchrun``): ``deqa launch -n 2 stages/train.py ...`` runs ``torchrun --standalone
--nproc_per_node 2 stages/train.py ...``, and ``deqa launch -n 4 score photos/ -o s.csv`` runs
``deqa score`` as ``python -m deqa.cli score ...`` on 4 ranks. What it adds to a bare torchrun:

- ``--cpu`` (or a machine without CUDA): the ranks run on CPU with gloo (``CUDA_VISIBLE_DEVICES``
  emptied, ``ACCELERATE_USE_CPU=true``), and each gets ``--threads`` torch threads (default: the
  CPU cores divided by the processes, at least 1) instead of torchrun's silent 1;
- one machine: ``--standalone`` (a free local port, so two jobs on one machine do not collide);
  several: ``--nnodes/--node-rank/--master-addr/--master-port`` are passed on;
- ``deqa score``'s exit codes (0 all scored, 1 some unreadable, 2 failed) survive: rank 0 hands
  its code back through a file (torchrun reports any non-zero worker exit as a failure);
- the default ``-n`` is the number of visible GPUs, and on a machine without one ``-n`` is
  required (accelerate's ``--cpu`` launcher would start one process whatever it is told:
  docs/distributed.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("deqa.launch")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Start N processes of a stage script (stages/train.py) or a deqa command (score) through "
        "torch's elastic launcher (torchrun): each process is one rank; on CPUs the ranks use gloo."
    )
    p.add_argument("-n", "--nproc", type=int, default=None, help="processes on this machine (default: its GPUs)")
    p.add_argument("--cpu", action="store_true", help="run the ranks on CPU (gloo) even where GPUs exist")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process on CPU (default: cores / N)")
    p.add_argument("--nnodes", type=int, default=1, help="machines in the job (default: 1)")
    p.add_argument("--node-rank", type=int, default=0, help="this machine's index, 0..nnodes-1")
    p.add_argument("--master-addr", default=None, help="address of machine 0 (several machines)")
    p.add_argument("--master-port", type=int, default=29500, help="port on machine 0 (several machines)")
    p.add_argument("--dry-run", action="store_true", help="print the torchrun command and exit")
    p.add_argument(
        "target",
        nargs=argparse.REMAINDER,
        metavar="SCRIPT.py|COMMAND ...",
        help="a Python script and its arguments, or a deqa command (score) and its arguments",
    )


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def build(args: argparse.Namespace, gpus: int) -> tuple[list[str], dict[str, str]]:
    """The torchrun command line and the environment of the ranks; ``ValueError`` on bad options."""
    target = list(args.target)
    if target and target[0] == "--":
        target = target[1:]
    if not target:
        raise ValueError("name a script (stages/train.py) or a deqa command (score) to launch")
    cpu = args.cpu or gpus == 0
    nproc = args.nproc if args.nproc is not None else (None if cpu else gpus)
    if nproc is None:
        raise ValueError("no GPU is visible: give the number of CPU processes with -n N")
    if nproc < 1 or args.nnodes < 1 or not 0 <= args.node_rank < args.nnodes:
        raise ValueError("-n and --nnodes must be at least 1, and --node-rank in 0..nnodes-1")
    if not cpu and nproc > gpus:
        raise ValueError(f"-n {nproc} but {gpus} GPU(s) visible: one process per GPU (or --cpu)")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if args.nnodes == 1:
        cmd.append("--standalone")
    else:
        if not args.master_addr:
            raise ValueError("several machines need --master-addr (machine 0's address)")
        cmd += [
            f"--nnodes={args.nnodes}",
            f"--node_rank={args.node_rank}",
            f"--master_addr={args.master_addr}",
            f"--master_port={args.master_port}",
        ]
    if target[0].endswith(".py") or Path(target[0]).is_file():
        cmd += target
    else:
        from deqa.cli import COMMANDS

        if target[0] not in COMMANDS or target[0] == "launch":
            raise ValueError(f"{target[0]!r} is neither a script nor a deqa command ({', '.join(COMMANDS)})")
        cmd += ["-m", "deqa.cli", *target]
    env = dict(os.environ)
    if cpu:
        threads = args.threads or max(1, _cores() // nproc)
        env.update(CUDA_VISIBLE_DEVICES="", ACCELERATE_USE_CPU="true", OMP_NUM_THREADS=str(threads))
    elif args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return cmd, env


def run(args: argparse.Namespace) -> int:
    import torch

    from deqa.distributed import STATUS_ENV

    try:
        cmd, env = build(args, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    shown = shlex.join(cmd[:1] + ["-m", "torch.distributed.run"] + cmd[3:])
    where = "CPU (gloo)" if env.get("ACCELERATE_USE_CPU") == "true" else "GPU"
    log.info("launching on %s, %s thread(s) each: %s", where, env.get("OMP_NUM_THREADS", "default"), shown)
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    with tempfile.TemporaryDirectory(prefix="deqa-launch-") as tmp:
        status = Path(tmp) / "status"
        env[STATUS_ENV] = str(status)
        code = subprocess.call(cmd, env=env)
        if code == 0 and status.is_file():
            return int(status.read_text().strip() or 0)
    return code
