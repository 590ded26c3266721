"""deqa: a reproducible DeQA-Score pipeline for any Hugging Face vision-language model.

Modules:
- :mod:`deqa.config`: typed ``params.yaml``.
- :mod:`deqa.schema`: the file contracts between stages (manifest, labels, predictions).
- :mod:`deqa.sources`: the ``prepare`` stage's sources combined, from :mod:`deqa.importers`
  (label files) and :mod:`deqa.synthetic` (the synthetic set, distorted versions of rated photos).
- :mod:`deqa.distortions`: the distortions and the one loop that writes every generated set.
- :mod:`deqa.images`: decoding rules for every image read (16-bit, EXIF, alpha).
- :mod:`deqa.validation`: the great-expectations suite of the ``validate`` stage.
- :mod:`deqa.labels`: DeQA-Score soft labels (``soft_labels`` stage).
- :mod:`deqa.basemodel`, :mod:`deqa.modeling`, :mod:`deqa.tiny`: the base checkpoint, the model
  layer and the embedded default model.
- :mod:`deqa.data`, :mod:`deqa.features`, :mod:`deqa.losses`, :mod:`deqa.checkpointing`,
  :mod:`deqa.training`: training data and pairs, the frozen-tower feature cache, the DeQA losses,
  exact resume, and the LoRA training loop.
- :mod:`deqa.sensitivity`: the distortion-sensitivity set (``sensitivity`` stage).
- :mod:`deqa.scoring`, :mod:`deqa.evaluation`: :class:`~deqa.scoring.Scorer` (streaming batched
  scoring) and the ``evaluate`` stage's logic.
- :mod:`deqa.metrics`, :mod:`deqa.report`: evaluation metrics and the HTML report.
- :mod:`deqa.gate`, :mod:`deqa.export`, :mod:`deqa.stage`, :mod:`deqa.cli`: the reproducibility
  gate, merged export, the stage-script helpers and the ``deqa`` command.
"""

__version__ = "0.2.0"

LEVELS = ("bad", "poor", "fair", "good", "excellent")
"""The five quality levels, always in this order (level 1 first)."""
