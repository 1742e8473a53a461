"""A photo as cameras and editors write it -> the RGB uint8 array the model's preprocessing takes.

    image = read_photo("IMG_0001.jpg")             # (H, W, 3) uint8, upright as a viewer shows it
    image = read_photo(jpeg_bytes, max_pixels=10**7)
    is_photo_name("scan.ppm"), is_photo_name("notes.txt")    # True, False

- Orientation: the EXIF orientation tag (phones store a portrait photo landscape and tag it) is applied,
  so landmarks come back in pixels of the photo as it is shown.
- Bit depth: 16-bit grey (PIL modes I;16*, I) is scaled to 8 bits (v * 255 / 65535), not clipped;
  floating-point images (mode F) and 32-bit ones outside 0..65535 have no known range and are refused.
- Colour: palette, grey, CMYK, with alpha (dropped): PIL's conversion to RGB.
- Size: more than `max_pixels` pixels (default PIL's `Image.MAX_IMAGE_PIXELS`, 89.5 megapixels) is refused
  before decoding, as an error that names the size (PIL's decompression-bomb guard, which also refuses
  to open more than twice its own limit, whatever `max_pixels` says).
- Formats: whatever PIL decodes (`PHOTO_FORMATS`: JPEG, PNG, PPM/PGM, TIFF, BMP, WebP, GIF, ...).

Every refusal is an `UnreadablePhoto` (a ValueError) whose message says why; callers name the file.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

# Formats PIL only identifies (or decodes with an outside program): a file of these is not a photo here.
IDENTIFY_ONLY = frozenset({"BUFR", "GRIB", "HDF5", "MPEG", "WMF", "EPS"})


class UnreadablePhoto(ValueError):
    """A file PIL opens but whose pixels cannot become a photo (too large, unknown range)."""


def photo_suffixes() -> frozenset[str]:
    """File name suffixes (lower case, with the dot) of the formats PIL decodes: '.jpg', '.png', '.ppm', ..."""
    from PIL import Image

    return frozenset(ext for ext, fmt in Image.registered_extensions().items()
                     if fmt in Image.OPEN and fmt not in IDENTIFY_ONLY)


def is_photo_name(path: str | Path) -> bool:
    """Whether a file name has the suffix of a format PIL decodes (the content is checked when read)."""
    return Path(path).suffix.lower() in photo_suffixes()


def read_photo(source: str | Path | bytes, max_pixels: int | None = None) -> np.ndarray:
    """A file path or encoded bytes -> (H, W, 3) uint8 RGB, EXIF orientation applied (module docstring).

    Raises UnreadablePhoto (too many pixels, unknown range), or PIL's OSError / UnidentifiedImageError
    for a file that is not an image or is truncated.
    """
    from PIL import Image, ImageOps

    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    with warnings.catch_warnings():  # PIL warns above its limit and refuses at twice it; ours is checked below
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
        except Image.DecompressionBombError as err:
            raise UnreadablePhoto(f"too large to decode ({err})") from None
    with im:
        width, height = im.size
        if limit and width * height > limit:
            raise UnreadablePhoto(f"{width} x {height} pixels ({width * height / 1e6:.1f} megapixels) is over the "
                                  f"limit of {limit / 1e6:.1f} megapixels (PIL's Image.MAX_IMAGE_PIXELS)")
        upright = ImageOps.exif_transpose(im)  # a decoded copy, turned as the EXIF orientation tag says
    return _rgb8(upright)


def _rgb8(im) -> np.ndarray:
    """A decoded PIL image of any mode -> (H, W, 3) uint8."""
    if im.mode.startswith("I;16") or im.mode == "I":
        grey = np.asarray(im).astype(np.int64)
        if grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise UnreadablePhoto(f"32-bit integer pixels from {grey.min()} to {grey.max()}: their range is unknown; "
                                  "save the photo with 8 or 16 bits per channel")
        grey8 = ((grey * 255 + 32767) // 65535).astype(np.uint8)  # rounded, 65535 -> 255
        return np.repeat(grey8[..., None], 3, axis=-1)
    if im.mode == "F":
        raise UnreadablePhoto("floating-point pixels (PIL mode F): their range is unknown; save the photo with 8 or "
                              "16 bits per channel")
    return np.asarray(im.convert("RGB"))


__all__ = ["UnreadablePhoto", "is_photo_name", "photo_suffixes", "read_photo"]
