"""Load any image file as 8-bit RGB the same way everywhere: training, evaluation, validation, scoring.

>>> from deqa.images import load_image, ImageLoadError
>>> im = load_image("photo.tif")            # doctest: +SKIP  (PIL.Image.Image, mode "RGB", 8-bit)

What :func:`load_image` does, in order:

1. **Opens** the file with Pillow. Every failure is an :class:`ImageLoadError` (a ``ValueError``)
   whose message names the file and the reason: missing file, symlink loop, over-long name, NUL
   byte in the name, permission, not an image, truncated data, decompression bomb. Never a bare
   ``OSError`` traceback.
2. **First frame only** of multi-frame files (GIF, multi-page TIFF); :func:`conversion_issues` flags
   them for validation.
3. **EXIF orientation** is applied (``ImageOps.exif_transpose``), so a phone photo stored sideways
   with an orientation tag is scored upright.
4. **Bit depth** is scaled, never clipped: 16-bit grey (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``)
   and 32-bit integer (``I``, read as a 16-bit range, which is what such files hold) are divided by
   257 (65535 -> 255); float (``F``) is read as [0, 1] -> [0, 255]. Values outside those ranges are
   clipped and flagged by :func:`conversion_issues`. (Pillow 13 already reads 16-bit RGB/RGBA PNG
   and TIFF as 8-bit ``RGB``/``RGBA`` by keeping the high byte; only single-channel deep images
   used to be clipped to near-white by ``convert("RGB")``.) Multi-channel float TIFFs are not
   readable by Pillow and fail with a clear reason.
5. **Colour**: palette, CMYK, YCbCr, LAB, HSV, 1-bit and grey go through Pillow's ``convert``.
   **Transparency** (RGBA, LA, PA, a palette or grey image with a ``transparency`` entry) is
   composited onto an opaque **white** background, the same choice as transformers'
   ``image_transforms.convert_to_rgb``, so a transparent pixel is white, not whatever colour the
   file stored beneath it.

:func:`conversion_issues` lists what cannot be converted faithfully (validation quarantines such
rows; scoring still scores them): float values outside [0, 1] or not finite, integer values outside
[0, 65535], more than one frame, and modes outside the ones above.
"""

from __future__ import annotations

import errno
import logging
import os
import warnings
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

#: opaque background that transparent pixels are composited onto (as transformers does)
ALPHA_BACKGROUND = (255, 255, 255)
#: modes converted with Pillow's own ``convert`` (8 bits per channel)
EIGHT_BIT_MODES = {"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
DEEP_MODES = SIXTEEN_BIT_MODES | {"I", "F"}
KNOWN_MODES = EIGHT_BIT_MODES | ALPHA_MODES | DEEP_MODES


class ImageLoadError(ValueError):
    """An image that cannot be loaded; ``str()`` is ``"<file>: <reason>"``."""

    def __init__(self, path, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"{display_path(path)}: {reason}")


def display_path(path) -> str:
    """The path as printable UTF-8 text for a one-line message or an output row.

    Control characters (NUL, newline, ...) become ``\\x00``-style escapes and bytes that are not
    UTF-8 (a file name from another encoding) ``\\xe9``-style escapes; other paths are unchanged.
    """
    text = os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else str(path)
    if any(ord(c) < 32 or c == "\x7f" for c in text):
        text = "".join(ascii(c)[1:-1] if ord(c) < 32 or c == "\x7f" else c for c in text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not valid UTF-8 on disk (surrogate escapes)
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


def error_reason(exc: BaseException, path) -> str:
    """A short human reason for an exception raised while opening or decoding ``path``."""
    from PIL import Image, UnidentifiedImageError

    text = str(exc)
    if isinstance(exc, ValueError) and "null byte" in text:
        return "the file name contains a NUL byte"
    if isinstance(exc, Image.DecompressionBombError):
        return f"too many pixels (decompression-bomb guard): {text}"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can read (unknown format, or an unsupported variant such as a multi-channel float TIFF)"
    if isinstance(exc, OSError) and exc.errno is not None:
        known = {
            errno.ENOENT: "no such file",
            errno.ELOOP: "symlink loop (too many levels of symbolic links)",
            errno.ENAMETOOLONG: f"file name too long ({len(os.fsencode(str(path)))} bytes)",
            errno.EISDIR: "is a directory, not an image file",
            errno.EACCES: "permission denied",
            errno.ENOTDIR: "a component of the path is not a directory",
        }
        return known.get(exc.errno, exc.strerror or text)
    if isinstance(exc, OSError) and "truncated" in text:
        return f"truncated image data ({text})"
    return f"cannot decode: {type(exc).__name__}: {text}" if text else f"cannot decode: {type(exc).__name__}"


def load_image(path) -> Image.Image:
    """The image at ``path`` as an 8-bit RGB ``PIL.Image`` (rules in the module docstring).

    Raises :class:`ImageLoadError` naming the file and the reason for anything unreadable.
    """
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                try:
                    im = ImageOps.exif_transpose(im)
                except Exception as exc:
                    log.warning("%s: EXIF orientation unreadable (%s); used as stored", display_path(path), exc)
                return to_rgb(im)
    except ImageLoadError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        if isinstance(exc, Image.DecompressionBombWarning):
            exc = Image.DecompressionBombError(str(exc))
        raise ImageLoadError(path, error_reason(exc, path)) from exc


def to_rgb(im) -> Image.Image:
    """A PIL image of any supported mode as 8-bit RGB: deep modes scaled, alpha on white."""
    from PIL import Image

    mode = im.mode
    if mode in DEEP_MODES:
        return Image.fromarray(_deep_to_uint8(np.asarray(im), mode), mode="L").convert("RGB")
    if mode in ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA") if mode != "La" else im.convert("RGBa").convert("RGBA")
        canvas = Image.new("RGBA", im.size, (*ALPHA_BACKGROUND, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    try:
        return im.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageLoadError(
            getattr(im, "filename", "") or "<image>", f"cannot convert mode {mode} to RGB ({exc})"
        ) from exc


def _deep_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """16-bit / 32-bit integer / float samples -> uint8 (scaled, rounded, clipped)."""
    a = np.asarray(arr, dtype=np.float64)
    if mode == "F":
        a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=0.0) * 255.0
    else:
        a = a / 257.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def array_to_rgb(arr: np.ndarray) -> Image.Image:
    """A numpy image (HxW, HxWx1/3/4) as 8-bit RGB: uint8 as is, uint16 / 65535, float as [0, 1].

    Four channels are RGBA (composited on white like files); other integer types are read as
    16-bit, booleans as black/white.
    """
    from PIL import Image

    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"cannot score an array of shape {a.shape}; expected HxW, HxWx1, HxWx3 or HxWx4")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype.kind == "f":
        a = np.clip(np.rint(np.nan_to_num(a.astype(np.float64), nan=0.0) * 255.0), 0, 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(np.rint(a.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    mode = "L" if a.ndim == 2 else ("RGB" if a.shape[2] == 3 else "RGBA")
    return to_rgb(Image.fromarray(np.ascontiguousarray(a), mode=mode))


def conversion_issues(im) -> list[str]:
    """Why an opened (loaded) PIL image cannot be converted to 8-bit RGB faithfully; [] if it can.

    Flags: an unknown mode; float samples that are not finite or fall outside [0, 1]; integer
    samples outside [0, 65535]; more than one frame (only the first is used). Alpha and CMYK are
    not flagged: their conversion is defined (white background, Pillow's CMYK formula).
    """
    issues = []
    mode = im.mode
    if mode not in KNOWN_MODES:
        issues.append(f"image mode {mode} has no defined 8-bit RGB conversion")
    elif mode in ("F", "I"):
        a = np.asarray(im, dtype=np.float64)
        if mode == "F" and not np.isfinite(a).all():
            issues.append("float image holds NaN or infinite values")
        finite = a[np.isfinite(a)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        top = 1.0 if mode == "F" else 65535.0
        if lo < 0 or hi > top:
            kind = "float" if mode == "F" else "32-bit integer"
            issues.append(f"{kind} image values span [{lo:g}, {hi:g}], outside [0, {top:g}]; they would be clipped")
    frames = getattr(im, "n_frames", 1) or 1
    if frames > 1:
        issues.append(f"{frames} frames; only the first would be used")
    return issues


def check_image(path) -> tuple[Image.Image, list[str]]:
    """Open and fully decode ``path`` for validation: (the raw loaded image, its conversion issues).

    The image is returned in its own mode (call :func:`to_rgb` to convert it); read errors are
    :class:`ImageLoadError` exactly as in :func:`load_image`.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                issues = conversion_issues(im)
                im.seek(0)
                return im.copy(), issues
    except MemoryError:
        raise
    except Exception as exc:
        if isinstance(exc, Image.DecompressionBombWarning):
            exc = Image.DecompressionBombError(str(exc))
        raise ImageLoadError(path, error_reason(exc, path)) from exc
