"""Photos as cameras and editors write them (`landmarks.predict.photo`): real files written by PIL with
an EXIF orientation tag, 16-bit grey, PPM, too many pixels, floating-point pixels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from landmarks.predict.photo import UnreadablePhoto, is_photo_name, read_photo

ORIENTATION = 0x0112
# EXIF orientation -> the PIL transpose that makes the stored pixels upright (what a viewer shows).
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_270,
           8: Image.Transpose.ROTATE_90}


def _upright(width: int = 64, height: int = 36) -> Image.Image:
    """A landscape picture, red growing to the right and green downwards: any turn or flip changes it."""
    y, x = np.mgrid[:height, :width]
    return Image.fromarray(np.stack([x * 255 // (width - 1), y * 255 // (height - 1), np.full_like(x, 90)],
                                    -1).astype(np.uint8))


@pytest.mark.parametrize("orientation", [2, 3, 6, 8])
def test_exif_orientation_is_applied(tmp_path, orientation):
    """Stored as a camera stores it (a phone keeps a portrait shot landscape and tags it), read as shown."""
    shown = _upright()
    stored = shown.transpose(UPRIGHT[orientation])  # each of these is its own inverse, or 90 <-> 270
    if orientation in (6, 8):
        stored = shown.transpose(UPRIGHT[14 - orientation])
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    path = tmp_path / f"o{orientation}.png"  # lossless, so the pixels must match exactly
    stored.save(path, exif=exif.tobytes())
    assert Image.open(path).size == stored.size
    image = read_photo(path)
    assert image.shape == (36, 64, 3)  # height, width as shown: landscape
    np.testing.assert_array_equal(image, np.asarray(shown))
    np.testing.assert_array_equal(read_photo(path.read_bytes()), image)  # bytes (the pyfunc model) read alike


def test_phone_jpeg_with_orientation_6_is_shown_landscape(tmp_path):
    """The issue's photo: stored 360 x 640 (W x H), EXIF orientation 6, shown 640 x 360."""
    stored = _upright(640, 360).transpose(Image.Transpose.ROTATE_90)
    assert stored.size == (360, 640)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    stored.save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    image = read_photo(tmp_path / "phone.jpg")
    assert image.shape == (360, 640, 3)
    assert np.abs(image.astype(int) - np.asarray(_upright(640, 360), int)).mean() < 3  # JPEG noise only


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    grey8 = np.linspace(0, 255, 64 * 32).reshape(32, 64).round().astype(np.uint8)
    Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / "g16.png")  # 0..65535
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    assert np.asarray(Image.open(tmp_path / "g16.png").convert("RGB")).mean() > 250  # what PIL alone gives
    image = read_photo(tmp_path / "g16.png")
    np.testing.assert_array_equal(image, np.repeat(grey8[..., None], 3, -1))


def test_ppm_and_other_pil_formats_are_photos(tmp_path):
    picture = _upright()
    for name in ("takeo.ppm", "scan.tif", "icon.bmp", "web.webp"):
        picture.save(tmp_path / name, **({"lossless": True} if name.endswith("webp") else {}))
        assert is_photo_name(name)
        np.testing.assert_array_equal(read_photo(tmp_path / name), np.asarray(picture))
    for name in ("notes.txt", "predictions.json", ".DS_Store", "clip.mpg", "model.pt"):
        assert not is_photo_name(name), name


def test_too_many_pixels_is_refused_before_decoding(tmp_path, monkeypatch):
    """PIL's decompression-bomb guard, lowered so that a blank 400 x 300 PNG stands for a 196 MP one."""
    Image.new("RGB", (400, 300)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    with pytest.raises(UnreadablePhoto, match=r"400 x 300 pixels \(0.1 megapixels\) is over the limit of 0.1"):
        read_photo(tmp_path / "big.png")
    # Twice PIL's limit: PIL itself refuses to open it (DecompressionBombError), said the same way.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)
    with pytest.raises(UnreadablePhoto, match="too large"):
        read_photo(tmp_path / "big.png", max_pixels=0)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200_000)
    assert read_photo(tmp_path / "big.png").shape == (300, 400, 3)
    with pytest.raises(UnreadablePhoto, match="over the limit of 0.1 megapixels"):
        read_photo(tmp_path / "big.png", max_pixels=100_000)


def test_pixels_without_a_known_range_are_refused(tmp_path):
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(UnreadablePhoto, match="floating-point"):
        read_photo(tmp_path / "f.tif")
    Image.fromarray(np.full((8, 8), 70_000, np.int32)).save(tmp_path / "i32.tif")
    with pytest.raises(UnreadablePhoto, match="70000"):
        read_photo(tmp_path / "i32.tif")
