"""Scoring on a Ray cluster: Ray Data ``map_batches`` with the :class:`deqa.scoring.Scorer`.

``pip install 'deqa[ray]'`` (Ray Data, pinned). For scoring beyond one machine with an engine that
runs the cluster already (scheduling, retries, autoscaling, reading and writing Parquet/CSV on
shared or object storage). :class:`ScoreBatches` is a callable class, so Ray builds it once per
actor: the model loads once per actor and scores every batch that actor receives.

>>> import ray
>>> from deqa.ray_scoring import score_dataset
>>> ds = ray.data.from_items([{"path": p} for p in paths])          # doctest: +SKIP
>>> scored = score_dataset(ds, "models/deqa", actors=8, num_gpus=1)  # doctest: +SKIP
>>> scored.write_parquet("s3://bucket/scores/")                      # doctest: +SKIP

Each output row has the columns of ``deqa score`` (:data:`deqa.score_files.FIELDS`): ``path``,
``score``, ``std``, ``p_bad`` .. ``p_excellent`` (NaN for an unreadable image) and ``error`` (empty
when scored). Paths are read by each actor, so they must be reachable from every node (a shared
file system) or the dataset must carry the images' bytes (``ray.data.read_binary_files``: pass
``column="bytes"``). The scores equal ``deqa score``'s (same :class:`~deqa.scoring.Scorer`, same
batch invariance).
"""

from __future__ import annotations

import io
import math

import numpy as np

from deqa.score_files import FIELDS

FLOAT_FIELDS = FIELDS[1:-1]


class ScoreBatches:
    """``map_batches`` callable: score a batch ``{"path": [...]}`` (or image bytes) with one loaded model.

    ``threads``: torch threads of the actor (give the actor as many CPUs with ``num_cpus``).
    """

    def __init__(
        self,
        model: str,
        base: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = 16,
        threads: int = 1,
        column: str = "path",
    ):
        import torch

        from deqa.scoring import Scorer

        torch.set_num_threads(threads)
        self.column, self.batch_size = column, batch_size
        self.scorer = Scorer.from_pretrained(model, base=base, device=device, dtype=dtype, batch_size=batch_size)

    def _inputs(self, batch: dict) -> tuple[list, list[str]]:
        """The batch's inputs (paths, or images decoded from bytes; a reason where unreadable) and names."""
        values = list(batch[self.column])
        if self.column == "path":
            return [str(v) for v in values], [str(v) for v in values]
        from deqa.images import ImageLoadError, load_image

        names = [str(v) for v in batch["path"]] if "path" in batch else [str(i) for i in range(len(values))]
        images = []
        for v in values:
            try:  # the rules of deqa.images (EXIF orientation, deep and alpha modes) on the bytes
                images.append(load_image(io.BytesIO(bytes(v))))
            except ImageLoadError as exc:
                images.append(exc.reason)
        return images, names

    def __call__(self, batch: dict) -> dict[str, np.ndarray]:
        inputs, names = self._inputs(batch)
        bad = {j: x for j, x in enumerate(inputs) if isinstance(x, str) and self.column != "path"}
        rows = [None] * len(inputs)
        todo = [j for j in range(len(inputs)) if j not in bad]
        items = [inputs[j] for j in todo]
        for part in self.scorer.iter_score(items, self.batch_size, names=[names[j] for j in todo], decoder="none"):
            for k, record in enumerate(part.records()):
                rows[todo[part.start + k]] = record
        for j, reason in bad.items():
            rows[j] = {"path": names[j], "error": reason}
        return {
            "path": np.array([r["path"] for r in rows], dtype=object),
            **{f: np.array([r.get(f, math.nan) for r in rows], dtype=np.float64) for f in FLOAT_FIELDS},
            "error": np.array([r.get("error", "") for r in rows], dtype=object),
        }


def score_dataset(
    ds,
    model: str,
    *,
    actors: int = 1,
    batch_size: int = 16,
    num_cpus: float = 1,
    num_gpus: float = 0,
    **scorer_kwargs,
):
    """``ds.map_batches(ScoreBatches, ...)`` on a pool of ``actors`` (lazy: a Ray ``Dataset``)."""
    import ray

    threads = max(1, int(num_cpus))
    return ds.map_batches(
        ScoreBatches,
        fn_constructor_kwargs={"model": str(model), "batch_size": batch_size, "threads": threads, **scorer_kwargs},
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        batch_format="numpy",
    )


def score_paths(paths: list[str], model: str, **kwargs) -> list[dict]:
    """Score image paths on the connected Ray cluster; rows in ``paths``' order (``ray.init`` first)."""
    import ray

    ds = ray.data.from_items([{"path": str(p)} for p in paths])
    rows = {}
    for r in score_dataset(ds, model, **kwargs).iter_rows():
        rows.setdefault(r["path"], r)
    return [rows[str(p)] for p in paths]
