"""Image files and uploads -> 8-bit grayscale or RGB PIL images: the one decoder the CLI, the data loaders and
the server share, and the search for image files in folders.

Images are untrusted: the pixel count is checked from the header before any pixel is decoded (a decompression
bomb declares a huge size in a few bytes), every mode PIL opens (16-bit, CMYK, palette, alpha, multi-frame)
becomes 8-bit grayscale or RGB, and any failure inside PIL's decoders becomes a DataError naming the image.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from googlenet.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Malformed files can make PIL's decoders raise more than OSError: wrong tag types in a TIFF raise TypeError,
# absurd tile sizes OverflowError or MemoryError.
DECODER_FAILURES = (OSError, ValueError, SyntaxError, EOFError, TypeError, OverflowError, MemoryError, IndexError)


class EmptyImageError(DataError):
    """No bytes at all."""


class UnknownFormatError(DataError):
    """Bytes that are not an image in any format allowed."""


class DamagedImageError(DataError):
    """An image whose header was recognised but whose pixels could not be decoded."""


class ImageTooLargeError(DataError):
    """More pixels than allowed, declared in the header (a decompression bomb) or after the resize."""

    def __init__(self, message: str, *, after_resize: bool = False) -> None:
        super().__init__(message)
        self.after_resize = after_resize


def decode_image(
    source: bytes | str | Path,
    in_channels: int = 3,
    *,
    max_pixels: int | None = None,
    shorter_side: int = 0,
    formats: Sequence[str] | None = None,
    name: str | None = None,
) -> Image.Image:
    """Decode ``source`` (a file path or the bytes of an upload) into 8-bit grayscale (1 channel) or RGB (3).
    ``max_pixels`` (default: PIL's MAX_IMAGE_PIXELS) caps the pixels, both as declared and after resizing the
    shorter side to ``shorter_side`` px (a 40,000x1 strip is small, but resized to a 256 px shorter side it
    would take gigabytes); ``formats`` limits the formats PIL may try. Errors name the image as ``name``."""
    name = name or (f"image {source}" if isinstance(source, (str, Path)) else "the image")
    if isinstance(source, bytes) and not source:
        raise EmptyImageError(f"{name} is empty: no bytes were sent")
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x its pixel limit; a declared size that large is refused outright.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)  # e.g. palette transparency notes: not the sender's fault
            opened = source if isinstance(source, (str, Path)) else io.BytesIO(source)
            with Image.open(opened, formats=tuple(formats) if formats else None) as image:
                _check_size(image.size, max_pixels, shorter_side, name)
                image.load()
                return to_8bit(image).convert("L" if in_channels == 1 else "RGB")
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageTooLargeError(f"{name} was refused as a decompression bomb: {error}") from None
    except FileNotFoundError:
        raise DataError(f"{name} does not exist") from None
    except UnidentifiedImageError:
        allowed = ", ".join(formats) if formats else "PNG, JPEG, GIF, BMP, TIFF, WebP, ..."
        raise UnknownFormatError(f"{name} is not an image in a format this program reads ({allowed})") from None
    except DECODER_FAILURES as error:
        raise DamagedImageError(f"{name} could not be decoded (truncated or damaged?): {error}") from None


def open_image(path: str | Path, in_channels: int = 3) -> Image.Image:
    """An image file, decoded by `decode_image`."""
    return decode_image(Path(path), in_channels)


def _check_size(size: tuple[int, int], max_pixels: int | None, shorter_side: int, name: str) -> None:
    """Refuse, from the header alone, an image with more than ``max_pixels`` pixels as it is or once resized."""
    if max_pixels is None:
        return  # PIL's own limit (MAX_IMAGE_PIXELS) applies while it opens the file
    width, height = size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{name} declares {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}"
        )
    resized = shorter_side * shorter_side * max(width, height) / max(1, min(width, height))
    if resized > max_pixels:
        raise ImageTooLargeError(
            f"{name} is {width}x{height}: resized to a {shorter_side} px shorter side it would be "
            f"{resized:,.0f} pixels (limit {max_pixels:,}); crop it closer to a square",
            after_resize=True,
        )


def to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit single-channel images, scaled to 0-255 by their own range (PIL would clip). In float32
    and in place: a 6300x6300 16-bit image would take over a gigabyte through float64 copies."""
    if image.mode not in ("I", "I;16", "I;16B", "I;16L", "F"):
        return image
    pixels = np.array(image, dtype=np.float32)  # a copy: it is scaled in place
    low, high = float(pixels.min()), float(pixels.max())
    if high <= low:
        return Image.new("L", image.size, 0)
    pixels -= low
    pixels *= 255.0 / (high - low)
    np.rint(pixels, out=pixels)
    return Image.fromarray(pixels.astype(np.uint8), mode="L")


def collect_images(paths: Sequence[str | Path]) -> list[Path]:
    """Files and folders (searched recursively) -> the image files in them, sorted within each folder."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            images = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not images:
                raise DataError(f"folder {path} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            found += images
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(f"{path} does not exist")
    return found
