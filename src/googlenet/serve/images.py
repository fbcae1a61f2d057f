"""Uploaded bytes -> a PIL image the model can take, or an UploadError with the HTTP status that fits.

Uploads are untrusted: the byte size is capped before they are read in full, the pixel count is checked
from the image header before any pixel is decoded (a decompression bomb declares a huge size in a few
bytes), and every mode PIL opens (16-bit, CMYK, palette, alpha, multi-frame) becomes 8-bit grayscale or RGB.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from googlenet.errors import GoogLeNetError
from googlenet.training.data import to_8bit

# Types a browser or client may send for an image file it could not name more precisely.
GENERIC_TYPES = ("application/octet-stream", "")
# The formats PIL may try on an upload: the common raster ones. Others (EPS runs Ghostscript; PSD, FITS, ...)
# only widen what a hostile file can reach.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")


class UploadError(GoogLeNetError):
    """A request the server refuses; ``status`` is the HTTP status code to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_content_type(content_type: str | None, what: str = "the request body") -> None:
    """415 unless ``content_type`` is image/* (or unnamed, where the bytes will tell)."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if not (kind.startswith("image/") or kind in GENERIC_TYPES):
        raise UploadError(
            415, f"{what} has Content-Type {kind!r}; send an image (image/png, image/jpeg, ...) or multipart files"
        )


def decode_image(
    data: bytes, in_channels: int, *, max_pixels: int, shorter_side: int = 0, name: str = "the image"
) -> Image.Image:
    """Decode ``data`` into 8-bit grayscale (1 channel) or RGB (3), refusing more than ``max_pixels``, before
    or after the resize of its shorter side to ``shorter_side`` px (a 40,000x1 strip is small, but resized to
    a 256 px shorter side it would take gigabytes)."""
    if not data:
        raise UploadError(400, f"{name} is empty: no bytes were sent")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)  # e.g. palette transparency notes: not the client's fault
            with Image.open(io.BytesIO(data), formats=FORMATS) as image:
                width, height = image.size  # from the header: nothing decoded yet
                if width * height > max_pixels:
                    raise UploadError(
                        413,
                        f"{name} declares {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}",
                    )
                resized = shorter_side * shorter_side * max(width, height) / max(1, min(width, height))
                if resized > max_pixels:
                    raise UploadError(
                        422,
                        f"{name} is {width}x{height}: resized to a {shorter_side} px shorter side it would be "
                        f"{resized:,.0f} pixels (limit {max_pixels:,}); crop it closer to a square",
                    )
                image.load()
                return to_8bit(image).convert("L" if in_channels == 1 else "RGB")
    except UploadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UploadError(413, f"{name} was refused as a decompression bomb: {error}") from None
    except UnidentifiedImageError:
        raise UploadError(
            400, f"{name} is not an image in a format this server reads (PNG, JPEG, GIF, BMP, TIFF, WebP, ...)"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise UploadError(400, f"{name} could not be decoded (truncated or damaged?): {error}") from None
