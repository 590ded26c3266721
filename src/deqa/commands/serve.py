"""``deqa serve``: an HTTP scoring service over a trained model (the ``serve`` extra).

Loads the model as ``deqa score`` does, then serves ``POST /score``, ``GET /health``, an upload
page at ``/`` and the API docs at ``/docs`` until Ctrl-C / SIGTERM (:mod:`deqa.serve`; guide:
``docs/serving.md``). Exit codes: 0 stopped normally, 2 a usage, model or address error.
"""

from __future__ import annotations

import argparse
import logging
import os
import re

from deqa.images import display_path
from deqa.score_files import EXIT_FAILED, EXIT_OK
from deqa.scoring import ModelLoadError, Scorer

log = logging.getLogger("deqa.serve")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from deqa.serve.service import Limits  # no web framework needed for --help

    d = Limits()
    p.description = (
        "Serve a trained DeQA model over HTTP: POST /score (multipart 'image' fields, JSON base64 "
        "images or one raw image), GET /health, an upload page at / and API docs at /docs. "
        "Concurrent requests are scored in micro-batches. Needs the serve extra: pip install 'deqa[serve]'."
    )
    p.add_argument("--model", default="models/deqa", help="trained model: adapter folder or merged checkpoint")
    p.add_argument("--base", default=None, help="base checkpoint of an adapter (default: from its deqa_model.json)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000; 0: any free port, logged)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default: auto)")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own Python code")
    g = p.add_argument_group("batching and limits")
    g.add_argument(
        "--max-batch", type=int, default=d.max_batch, help=f"images per forward pass (default: {d.max_batch})"
    )
    g.add_argument(
        "--max-wait-ms",
        type=float,
        default=d.max_wait_ms,
        help=f"how long a batch waits to fill after its first image (default: {d.max_wait_ms:g})",
    )
    g.add_argument(
        "--max-queue",
        type=int,
        default=d.max_queue,
        help=f"images admitted at once; a request beyond it gets 503 + Retry-After (default: {d.max_queue})",
    )
    g.add_argument(
        "--max-images", type=int, default=d.max_images, help=f"images per request; more: 413 (default: {d.max_images})"
    )
    g.add_argument(
        "--max-request-mb",
        type=float,
        default=d.max_request_mb,
        help=f"request body size limit in MiB; larger: 413 (default: {d.max_request_mb:g})",
    )
    g.add_argument(
        "--max-requests",
        type=int,
        default=d.max_requests,
        help=f"POST /score requests handled at once; more: 503 + Retry-After (default: {d.max_requests})",
    )
    g.add_argument(
        "--max-pixels",
        type=int,
        default=d.max_pixels,
        help=f"pixels per image (decompression-bomb guard, as validation); more: that image's error (default: {d.max_pixels})",
    )
    g.add_argument(
        "--decode-threads",
        type=int,
        default=d.decode_threads,
        help="threads that decode uploads beside the model (default 0: the cores left beside torch's, 1-4)",
    )
    g.add_argument(
        "--encode-in",
        choices=["auto", "threads", "model", "inline"],
        default=d.encode_in,
        help="where uploads are decoded and encoded (resize, tokenise): threads (each image in the decoding "
        "threads, beside the model), model (decoded in the threads, encoded per batch in the model thread), "
        "inline (both in the model thread, as deqa score --decoder none); auto (default): threads on a GPU "
        "or with 2 spare CPU cores, else inline",
    )
    g.add_argument(
        "--api-key",
        default=os.environ.get("DEQA_API_KEY"),
        help="require this key on POST /score (X-API-Key or Authorization: Bearer); default: $DEQA_API_KEY, none if unset",
    )
    g.add_argument("--access-log", action="store_true", help="log one line per request")


def run(args: argparse.Namespace) -> int:
    try:
        from deqa.serve.app import create_app, serve
        from deqa.serve.service import Limits, ScoringService
    except ImportError as exc:
        log.error("deqa serve needs the serve extra (%s is missing): pip install 'deqa[serve]'", exc.name)
        return EXIT_FAILED
    try:
        limits = Limits(
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue,
            max_images=args.max_images,
            max_request_mb=args.max_request_mb,
            max_requests=args.max_requests,
            max_pixels=args.max_pixels,
            decode_threads=args.decode_threads,
            encode_in=args.encode_in,
        ).check()
    except ValueError as exc:
        log.error("%s", re.sub(r"\b(max_\w+|decode_threads)\b", lambda m: "--" + m[1].replace("_", "-"), str(exc)))
        return EXIT_FAILED
    if not 0 <= args.port <= 65535:
        log.error("--port must be 0..65535, got %d", args.port)
        return EXIT_FAILED
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        scorer = Scorer.from_pretrained(
            args.model,
            base=args.base,
            device=args.device,
            dtype=args.dtype,
            batch_size=limits.max_batch,
            trust_remote_code=args.trust_remote_code,
        )
    except ModelLoadError as exc:
        log.error("%s", exc)
        return EXIT_FAILED
    service = ScoringService(scorer, limits)
    app = create_app(service, model=display_path(args.model), api_key=args.api_key or None)
    try:
        # open connections: room for every allowed request plus idle kept-alive ones and /health
        serve(app, args.host, args.port, access_log=args.access_log, max_connections=4 * limits.max_requests + 64)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", args.host, args.port, exc.strerror or exc)
        return EXIT_FAILED
    return EXIT_OK
