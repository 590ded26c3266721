"""``deqa serve``: a small HTTP scoring service over the same :class:`deqa.scoring.Scorer` as ``deqa score``.

Two layers, so the batching can be used (and tested) without the web framework:

- :mod:`deqa.serve.service`: :class:`~deqa.serve.service.ScoringService` takes uploads (bytes),
  decodes each with :func:`deqa.images.load_image` and encodes it with the model's processor in a
  small thread pool, and scores them in dynamic micro-batches on one model thread; a bounded number
  of images may wait (beyond it a request is refused, never queued without bound).
- :mod:`deqa.serve.app`: the ASGI app (FastAPI on uvicorn, the ``serve`` extra:
  ``pip install 'deqa[serve]'``): ``POST /score``, ``GET /health``, ``GET /`` (an upload page),
  ``/docs`` and ``/redoc`` (offline OpenAPI pages), ``/openapi.json``; request size, image count
  and concurrency limits; an optional API key. :func:`~deqa.serve.app.serve` binds the socket and
  runs uvicorn.

How to start and call it: ``docs/serving.md``.
"""
