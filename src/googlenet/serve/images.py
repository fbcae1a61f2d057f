"""Uploaded bytes -> a PIL image the model can take, or an UploadError with the HTTP status that fits.

The decoding and its guards are the data layer's (googlenet.data.images); here the server only limits the
formats PIL may try and names the status of each refusal.
"""

from __future__ import annotations

from PIL import Image

from googlenet.data import images
from googlenet.errors import DataError, GoogLeNetError

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
    """`googlenet.data.images.decode_image` for an upload, its refusals turned into the HTTP status that fits:
    413 for too many pixels as declared, 422 once resized, 400 for anything that does not decode."""
    try:
        return images.decode_image(
            data, in_channels, max_pixels=max_pixels, shorter_side=shorter_side, formats=FORMATS, name=name
        )
    except images.ImageTooLargeError as error:
        raise UploadError(422 if error.after_resize else 413, str(error)) from None
    except DataError as error:
        raise UploadError(400, str(error)) from None
