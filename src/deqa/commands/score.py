"""``deqa score``: score image files, folders, globs and path lists with a trained model.

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

from deqa.images import display_path
from deqa.score_files import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, ResultWriter, expand_inputs, output_format
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


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        log.error("--batch-size must be at least 1")
        return EXIT_FAILED
    if args.resume and not args.output:
        log.error("--resume needs --output (the file to continue)")
        return EXIT_FAILED
    fmt = output_format(args.output, args.format)
    if args.output:
        existed = os.path.exists(args.output)
        why = _check_output(args.output)
        if why:
            log.error("cannot write the output %s: %s", display_path(args.output), why)
            return EXIT_FAILED
        if not existed and os.path.exists(args.output):
            os.remove(args.output)  # only the check created it
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if not getattr(args, "verbose", 0):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars; -v shows them
    paths, errors = expand_inputs(args.paths)
    scorer = None
    if paths:
        try:
            scorer = Scorer.from_pretrained(
                args.model,
                base=args.base,
                device=args.device,
                dtype=args.dtype,
                batch_size=args.batch_size,
                trust_remote_code=args.trust_remote_code,
            )
        except ModelLoadError as exc:
            log.error("%s", exc)
            return EXIT_FAILED
    with ResultWriter(args.output, fmt, resume=args.resume) as writer:
        todo = [p for p in paths if display_path(p) not in writer.done]
        if writer.resumed:
            log.info(
                "resuming %s: %d image(s) already scored, %d to go",
                display_path(args.output),
                writer.resumed,
                len(todo),
            )
        for item, reason in errors:
            log.warning("%s: %s", display_path(item), reason)
        writer.write([{"path": display_path(item), "error": reason} for item, reason in errors])
        scored, failed = _score_all(scorer, todo, writer, args) if todo else (0, 0)
    scored += writer.resumed
    failed += len(errors)
    where = f" -> {display_path(args.output)}" if args.output else ""
    log.info("scored %d image(s), %d unreadable%s", scored, failed, where)
    if not scored:
        log.error("no image could be scored" if paths or errors else "no input images")
        return EXIT_FAILED
    return EXIT_PARTIAL if failed else EXIT_OK


def _score_all(scorer: Scorer, todo: list[str], writer: ResultWriter, args) -> tuple[int, int]:
    """Score ``todo`` batch by batch into ``writer``; (scored, unreadable)."""
    from tqdm.auto import tqdm

    scored = failed = 0
    show = not args.no_progress and not args.quiet and len(todo) > 16
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
