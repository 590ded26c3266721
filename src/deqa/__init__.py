"""deqa: a reproducible DeQA-Score pipeline for any Hugging Face vision-language model.

Modules:
- :mod:`deqa.config`: typed ``params.yaml``.
- :mod:`deqa.schema`: the file contracts between stages (manifest, labels, predictions).
- :mod:`deqa.importers`, :mod:`deqa.synthetic`: the ``prepare`` stage's sources.
- :mod:`deqa.validation`: the great-expectations suite of the ``validate`` stage.
- :mod:`deqa.labels`: DeQA-Score soft labels (``soft_labels`` stage).
- :mod:`deqa.modeling`, :mod:`deqa.tiny`: the model layer and the embedded default model.
- :mod:`deqa.losses`, :mod:`deqa.training`: the DeQA losses and the LoRA training loop.
- :mod:`deqa.scoring`: :class:`~deqa.scoring.Scorer`, batched scoring of images.
- :mod:`deqa.metrics`, :mod:`deqa.report`: evaluation metrics and the HTML report.
"""

__version__ = "0.2.0"

LEVELS = ("bad", "poor", "fair", "good", "excellent")
"""The five quality levels, always in this order (level 1 first)."""
