"""``deqa score``: score image files, folders, globs and path lists with a trained model.

At scale (docs/distributed.md, :mod:`deqa.score_shards`): ``--shard I/N`` scores one deterministic
part of the sorted inputs (cluster array jobs), ``--merge`` joins the shards' outputs, and under a
multi-process launcher (``deqa launch -n N score ...``, torchrun) every rank scores its shard and
rank 0 merges them into ``--output``.

Rows are written as each batch is scored (CSV appended and flushed; ``json`` is an array written
one object per line and closed at the end, also on Ctrl-C; ``jsonl`` is JSON Lines), so an
interrupted run keeps what it scored and ``--resume`` scores only the rest. Exit codes: 0 every
image scored, 1 some images unreadable (each reported on stderr and in the ``error`` column), 2
nothing scored or a usage / model error, 130 interrupted. Errors are one line naming the file.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from deqa import score_shards as shards
from deqa.distributed import STATUS_ENV, Launch, LaunchError, check_processes, launch_info, parse_shard
from deqa.images import display_path
from deqa.score_files import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PARTIAL,
    ResultWriter,
    expand_inputs,
    output_format,
    read_results,
)
from deqa.scoring import DECODERS, ModelLoadError, Scorer

log = logging.getLogger("deqa.score")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Score images with a trained DeQA model. Writes one row per image: path, score (1-5), "
        "predicted std and the five level probabilities (bad..excellent), batch by batch. Exit codes: "
        "0 every image scored; 1 some images could not be read (reported on stderr and in the "
        "output's error column), the rest scored; 2 nothing scored (no inputs, all unreadable) or "
        "a usage or model error; 130 interrupted (rerun with --resume)."
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="image files, folders (searched recursively), glob patterns, or CSV/text lists of paths",
    )
    p.add_argument(
        "--model",
        default="models/deqa",
        help="trained model: an adapter folder or a merged checkpoint (default: models/deqa)",
    )
    p.add_argument("--base", default=None, help="base checkpoint of an adapter (default: from its deqa_model.json)")
    p.add_argument(
        "--format",
        choices=["csv", "json", "jsonl"],
        default=None,
        help="output format (default: from --output's extension: .json, .jsonl; else csv)",
    )
    p.add_argument("--output", "-o", default=None, help="write here instead of stdout (missing folders are created)")
    p.add_argument(
        "--resume", action="store_true", help="keep the scored rows already in --output and score only the other images"
    )
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: 16)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default: auto)")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--decoder",
        choices=DECODERS,
        default="auto",
        help="read the next batch's images in a background thread, a worker process, or inline "
        "(none); auto (default): thread on a GPU or with 2 spare CPU cores, else none",
    )
    p.add_argument(
        "--shard",
        metavar="I/N",
        default=None,
        help="score only shard I of N (0-based) of the sorted inputs, e.g. an array job's task; needs "
        "--output, resumable; join the shards' outputs with --merge",
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="merge the shard outputs given as PATHs (all N, each finished) into --output, sorted by path",
    )
    p.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own Python code")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _check_output(path: str) -> str | None:
    """None if ``path`` can be written (its folder is created), else the reason."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8"):
            pass
    except (OSError, ValueError) as exc:
        from deqa.images import error_reason

        return error_reason(exc, path)
    return None


def _writable(path: str) -> bool:
    """Check that ``path`` can be written (a file this check creates is removed again)."""
    existed = os.path.exists(path)
    why = _check_output(path)
    if why:
        log.error("cannot write the output %s: %s", display_path(path), why)
        return False
    if not existed and os.path.exists(path):
        os.remove(path)  # only the check created it
    return True


def _plan(args: argparse.Namespace) -> tuple[Launch, tuple[int, int] | None] | None:
    """This process's place (launch, shard); ``None`` after logging a usage error."""
    try:
        launch = launch_info()
        check_processes(launch.world)  # `accelerate launch --cpu --num_processes N` starts one
        shard = parse_shard(args.shard) if args.shard else None
    except (LaunchError, ValueError) as exc:
        log.error("%s", exc)
        return None
    if shard and launch.multi:
        log.error("--shard and %d processes: use one or the other (each rank scores its own shard)", launch.world)
        return None
    if (shard or launch.multi) and not args.output:
        log.error("--shard and multi-process scoring need --output (each shard writes its own file)")
        return None
    return launch, (launch.rank, launch.world) if launch.multi else shard


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        log.error("--batch-size must be at least 1")
        return EXIT_FAILED
    if args.resume and not args.output:
        log.error("--resume needs --output (the file to continue)")
        return EXIT_FAILED
    if args.merge:
        return _merge(args)
    plan = _plan(args)
    if plan is None:
        return EXIT_FAILED
    launch, shard = plan
    fmt = output_format(args.output, args.format)
    target = str(shards.part_path(args.output, *shard, fmt)) if launch.multi else args.output
    earlier = []  # under N processes with --resume: files whose scored rows count as done
    if launch.multi and args.resume:
        earlier = [p for p in [Path(args.output), *shards.other_parts(args.output, launch.world)] if p.is_file()]
    if (target and not _writable(target)) or (launch.multi and launch.is_main and not _writable(args.output)):
        return EXIT_FAILED
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if not getattr(args, "verbose", 0):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars; -v shows them
    paths, errors = expand_inputs(args.paths)
    digest = None
    if shard:
        total = len(set(paths))
        paths, digest = shards.select(paths, *shard)
        errors = errors if shard[0] == 0 else []  # reported once, by shard 0
        shards.clear_record(target)
        who = f"rank {launch.rank} of {launch.world}: " if launch.multi else ""
        log.info("%sshard %d/%d: %d of %d image(s) -> %s", who, *shard, len(paths), total, display_path(target))
    scorer = None
    if paths:
        try:
            scorer = Scorer.from_pretrained(
                args.model,
                base=args.base,
                device=_device(args.device, launch),
                dtype=args.dtype,
                batch_size=args.batch_size,
                trust_remote_code=args.trust_remote_code,
            )
        except ModelLoadError as exc:
            log.error("%s", exc)
            return EXIT_FAILED
    scored, failed = _score_into(scorer, paths, errors, target, fmt, shards.done_paths(earlier), args, launch)
    if shard:
        shards.write_record(target, *shard, digest, len(paths), read_results(target, fmt))
    if launch.multi:
        if not launch.is_main:
            return EXIT_OK  # rank 0 reports the merged result
        parts = shards.wait_for_parts(args.output, launch.world, fmt)
        scored, failed = shards.merge_results([*earlier, *parts], args.output, fmt)
        shards.remove_parts(args.output)
        log.info("merged the parts of %d processes -> %s", launch.world, display_path(args.output))
    elif shard and not paths and not errors:
        log.info("shard %d/%d holds no image", *shard)
        return EXIT_OK
    where = f" -> {display_path(args.output)}" if args.output else ""
    log.info("scored %d image(s), %d unreadable%s", scored, failed, where)
    if not scored:
        log.error("no image could be scored" if paths or errors or launch.multi else "no input images")
        return _status(EXIT_FAILED, launch)
    return _status(EXIT_PARTIAL if failed else EXIT_OK, launch)


def _device(device: str, launch: Launch) -> str:
    """``auto`` on N processes: each local rank its own GPU where there are GPUs."""
    if launch.multi and device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{launch.local_rank % torch.cuda.device_count()}"
    return device


def _status(code: int, launch: Launch) -> int:
    """Under ``deqa launch`` rank 0 hands its exit code to the launcher (``STATUS_ENV``) and exits 0."""
    status = os.environ.get(STATUS_ENV)
    if launch.multi and launch.is_main and status:
        Path(status).write_text(f"{code}\n")
        return EXIT_OK
    return code


def _score_into(scorer, paths, errors, target, fmt, done_elsewhere: set[str], args, launch) -> tuple[int, int]:
    """Score ``paths`` not done yet into ``target``; (scored, unreadable), the resumed rows included."""
    with ResultWriter(target, fmt, resume=args.resume) as writer:
        todo = [p for p in paths if display_path(p) not in writer.done and display_path(p) not in done_elsewhere]
        if writer.resumed or done_elsewhere:
            log.info(
                "resuming %s: %d image(s) already scored, %d to go",
                display_path(args.output),
                len(paths) - len(todo),
                len(todo),
            )
        for item, reason in errors:
            log.warning("%s: %s", display_path(item), reason)
        writer.write([{"path": display_path(item), "error": reason} for item, reason in errors])
        scored, failed = _score_all(scorer, todo, writer, args, show=launch.is_main) if todo else (0, 0)
    return scored + writer.resumed, failed + len(errors)


def _merge(args: argparse.Namespace) -> int:
    """``--merge``: the shard outputs given as paths -> one output sorted by path."""
    if not args.output:
        log.error("--merge needs --output (the merged file)")
        return EXIT_FAILED
    try:
        records = shards.check_shards(args.paths)
    except shards.ShardError as exc:
        log.error("cannot merge: %s", exc)
        return EXIT_FAILED
    if not _writable(args.output):
        return EXIT_FAILED
    fmt = output_format(args.output, args.format)
    scored, failed = shards.merge_results(args.paths, args.output, fmt)
    log.info(
        "merged %d shard(s): %d image(s) scored, %d unreadable -> %s",
        len(records),
        scored,
        failed,
        display_path(args.output),
    )
    if not scored:
        log.error("no image was scored in the shards")
        return EXIT_FAILED
    return EXIT_PARTIAL if failed else EXIT_OK


def _score_all(scorer: Scorer, todo: list[str], writer: ResultWriter, args, show: bool = True) -> tuple[int, int]:
    """Score ``todo`` batch by batch into ``writer``; (scored, unreadable)."""
    from tqdm.auto import tqdm

    scored = failed = 0
    show = show and not args.no_progress and not args.quiet and len(todo) > 16
    log.info("scoring %d image(s) in batches of %d", len(todo), args.batch_size)
    try:
        with tqdm(total=len(todo), desc="score", unit="img", disable=not show, file=sys.stderr) as bar:
            for batch in scorer.iter_score(todo, args.batch_size, decoder=args.decoder):
                writer.write(batch.records())
                for j, reason in sorted(batch.errors.items()):
                    log.warning("%s: %s", batch.names[j], reason)
                scored += len(batch.ok)
                failed += len(batch.errors)
                bar.update(len(batch.names))
    except KeyboardInterrupt:
        if args.output:
            log.error(
                "interrupted after %d image(s); they are in %s: run the same command with --resume to score the rest",
                scored + writer.resumed,
                display_path(args.output),
            )
        raise
    return scored, failed
