"""The file contracts between stages. Each is defined once here and documented in the README.

All files are CSV (UTF-8, header row). Level-probability columns are always ordered bad..excellent.

**Manifest** (``data/prepare/manifest.csv``, ``data/validate/manifest.csv``): one row per image.

==========  ======================================================================
image       path of the image file, relative to ``root`` (POSIX separators)
root        the data root of its source (absolute, or relative to the repo root)
dataset     the source's name (``prepare.sources[].name``)
split       ``train`` | ``val`` | ``test``
mos         raw MOS on the dataset's own scale
std         raw std of the ratings on the same scale (empty where unknown)
n_votes     number of ratings (empty where unknown)
lo, hi      the dataset's normalisation bounds (observed min/max MOS unless overridden)
==========  ======================================================================

Optional manifest columns: ``c1``..``c5`` vote counts per ACR level (KonIQ layout), and the
provenance of generated images (:data:`PROVENANCE_COLUMNS`): ``content`` (the source photo or
scene the image was made from), ``distortion`` (its name; ``pristine`` for an undistorted image)
and ``severity`` (0 for pristine, 1..N). Where present they travel unchanged into the label files
and the predictions, so evaluation can break results down per distortion and severity.

**Label files** (``data/soft_labels/{train,val,test}.csv``): the manifest's columns plus
``m``, ``s`` (normalised to [1, 5]), ``p_bad``..``p_excellent``, ``label_kind`` and ``fallback``.

**Predictions** (``data/evaluate/predictions.csv``): ``image``, ``root``, ``dataset``, ``split``,
``mos``, ``std``, ``m``, ``s``, ``pred_mean``, ``pred_std``, ``p_bad``..``p_excellent``, plus
the provenance columns where the rows have them.
"""

from deqa import LEVELS

MANIFEST_COLUMNS = ["image", "root", "dataset", "split", "mos", "std", "n_votes", "lo", "hi"]
VOTE_COLUMNS = ["c1", "c2", "c3", "c4", "c5"]
PROVENANCE_COLUMNS = ["content", "distortion", "severity"]
SPLITS = ("train", "val", "test")
PROB_COLUMNS = [f"p_{level}" for level in LEVELS]
LABEL_COLUMNS = MANIFEST_COLUMNS + ["m", "s", *PROB_COLUMNS, "label_kind", "fallback"]
PREDICTION_COLUMNS = [
    "image", "root", "dataset", "split", "mos", "std", "m", "s", "pred_mean", "pred_std",
    *PROB_COLUMNS,
]
