"""deqa.images: every file type becomes the same 8-bit RGB; every unreadable file one clear error."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from deqa.images import ImageLoadError, array_to_rgb, check_image, conversion_issues, load_image


def photo(h=48, w=64, seed=0) -> np.ndarray:
    """A smooth, non-symmetric RGB test image (uint8)."""
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    img = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x * y) % 256], axis=-1)
    return np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)


def write_png16(path, arr: np.ndarray) -> None:
    """A 16-bit PNG written byte by byte (grey, grey+alpha, RGB or RGBA), independent of Pillow."""
    a = np.asarray(arr, dtype=">u2")
    colour = 0 if a.ndim == 2 else {2: 4, 3: 2, 4: 6}[a.shape[2]]
    raw = b"".join(b"\x00" + a[y].tobytes() for y in range(a.shape[0]))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", a.shape[1], a.shape[0], 16, colour, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def pixels(im) -> np.ndarray:
    assert im.mode == "RGB"
    return np.asarray(im).astype(int)


def test_16bit_grey_png_and_tiff_are_scaled_not_clipped(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    grey = photo()[:, :, 0]
    deep = grey.astype(np.uint16) * 257
    write_png16(tmp_path / "g.png", deep)
    Image.fromarray(deep).save(tmp_path / "g_pil.png")
    tifffile.imwrite(tmp_path / "g.tif", deep)
    expected = np.repeat(grey[:, :, None], 3, axis=2).astype(int)
    for name in ("g.png", "g_pil.png", "g.tif"):
        assert np.array_equal(pixels(load_image(tmp_path / name)), expected), name
    # the old path, convert("RGB"), clipped this photo to near-white
    with Image.open(tmp_path / "g.png") as im:
        assert np.asarray(im.convert("RGB")).mean() > grey.mean() + 50


def test_16bit_rgb_and_rgba_png_and_tiff_match_8bit(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    rgb = photo()
    deep = rgb.astype(np.uint16) * 257
    opaque = np.dstack([deep, np.full(deep.shape[:2], 65535, np.uint16)])
    write_png16(tmp_path / "c.png", deep)
    write_png16(tmp_path / "ca.png", opaque)
    tifffile.imwrite(tmp_path / "c.tif", deep)
    for name in ("c.png", "ca.png", "c.tif"):
        assert np.array_equal(pixels(load_image(tmp_path / name)), rgb.astype(int)), name


def test_float_tiff_in_unit_range_is_scaled_and_out_of_range_is_flagged(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    grey = photo()[:, :, 1]
    tifffile.imwrite(tmp_path / "f.tif", grey.astype(np.float32) / 255)
    assert np.array_equal(pixels(load_image(tmp_path / "f.tif"))[:, :, 0], grey.astype(int))
    assert check_image(tmp_path / "f.tif")[1] == []
    tifffile.imwrite(tmp_path / "big.tif", grey.astype(np.float32) * 100)
    _, issues = check_image(tmp_path / "big.tif")
    assert len(issues) == 1 and "outside [0, 1]" in issues[0] and "25500" in issues[0]


def test_exif_orientation_is_applied(tmp_path):
    upright = photo(40, 60)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # stored sideways
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: the viewer rotates it 90 degrees clockwise
    stored.save(tmp_path / "r.png", exif=exif.tobytes())
    loaded = pixels(load_image(tmp_path / "r.png"))
    assert loaded.shape == (40, 60, 3)
    assert np.array_equal(loaded, upright.astype(int))


def test_alpha_is_composited_on_white_and_modes_agree(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :4, 3] = 255  # left half opaque red-ish, right half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = pixels(load_image(tmp_path / "a.png"))
    assert (out[:, :4] == [200, 0, 0]).all() and (out[:, 4:] == 255).all()
    # palette with a transparent index, LA and CMYK give what the RGB/RGBA versions give
    pal = Image.fromarray(rgba, "RGBA").quantize(colors=4)
    pal.save(tmp_path / "p.png", transparency=pal.getpixel((6, 0)))
    assert np.array_equal(pixels(load_image(tmp_path / "p.png")), out)
    la = np.stack([np.full((8, 8), 90, np.uint8), rgba[..., 3]], axis=-1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert (pixels(load_image(tmp_path / "la.png"))[:, :4] == 90).all()
    assert (pixels(load_image(tmp_path / "la.png"))[:, 4:] == 255).all()
    Image.fromarray(photo(), "RGB").convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    assert np.abs(pixels(load_image(tmp_path / "c.jpg")) - photo().astype(int)).mean() < 6


def test_arrays_follow_the_same_rules():
    rgb = photo()
    assert np.array_equal(pixels(array_to_rgb(rgb)), rgb.astype(int))
    assert np.array_equal(pixels(array_to_rgb(rgb.astype(np.uint16) * 257)), rgb.astype(int))
    assert np.array_equal(pixels(array_to_rgb(rgb / 255.0)), rgb.astype(int))
    with pytest.raises(ValueError, match="shape"):
        array_to_rgb(np.zeros((4, 4, 2)))


def test_multi_frame_is_flagged(tmp_path):
    frames = [Image.fromarray(photo(seed=s)) for s in range(3)]
    frames[0].save(tmp_path / "m.gif", save_all=True, append_images=frames[1:])
    _im, issues = check_image(tmp_path / "m.gif")
    assert issues == ["3 frames; only the first would be used"]
    assert load_image(tmp_path / "m.gif").size == (64, 48)


def test_unknown_mode_is_flagged():
    class Odd:
        mode = "BGR;15"
        n_frames = 1

    assert conversion_issues(Odd()) == ["image mode BGR;15 has no defined 8-bit RGB conversion"]


@pytest.mark.parametrize("case", ["loop", "nul", "long", "missing", "truncated", "text", "directory"])
def test_unreadable_files_raise_one_clear_error(tmp_path, case):
    if case == "loop":
        os.symlink(tmp_path / "b.png", tmp_path / "a.png")
        os.symlink(tmp_path / "a.png", tmp_path / "b.png")
        path, reason = tmp_path / "a.png", "symlink loop"
    elif case == "nul":
        path, reason = str(tmp_path / "a\0b.png"), "NUL byte"
    elif case == "long":
        path, reason = tmp_path / ("x" * 300 + ".png"), "file name too long"
    elif case == "missing":
        path, reason = tmp_path / "none.png", "no such file"
    elif case == "truncated":
        Image.fromarray(photo(200, 200)).save(tmp_path / "t.jpg")
        data = (tmp_path / "t.jpg").read_bytes()
        (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
        path, reason = tmp_path / "t.jpg", "truncated"
    elif case == "text":
        (tmp_path / "t.png").write_text("not an image")
        path, reason = tmp_path / "t.png", "not an image"
    else:
        path, reason = tmp_path, "is a directory"
    for fn in (load_image, check_image):
        with pytest.raises(ImageLoadError) as err:
            fn(path)
        assert isinstance(err.value, ValueError)
        message = str(err.value)
        assert reason in message and "\n" not in message and "\0" not in message
        assert message.startswith(str(path).replace("\0", "\\x00")[:40])
