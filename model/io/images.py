"""Images (:func:`read_image`): a decoded RGB picture, or :class:`~model.io.contract.InputError`.

PNG, JPEG (incl. MPO), WebP, BMP, GIF and TIFF (first frame) only -- other Pillow plugins are never
consulted. ``width * height`` is checked against ``max_pixels`` from the header before decoding
(``image_bomb``); truncated data -> ``truncated``; EXIF orientation is applied; alpha / palette
transparency is composited on white; 16-bit images (``I;16*``, and ``I`` images whose values lie in
0..65535 above 255) are divided by 257 (not clipped), ``I`` images within 0..255 are kept, float
images within [0, 1] are scaled by 255, anything else is min-max stretched; CMYK and other modes use
Pillow's conversion to RGB. Pillow's own decompression-bomb error (above twice
``PIL.Image.MAX_IMAGE_PIXELS``) is also reported as ``image_bomb``.
"""

from __future__ import annotations

import io
import logging
import os
import re
import struct

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from model.io.contract import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, InputError, article, read_source
from model.io.sniff import image_kind, sniff_3d_format

logger = logging.getLogger(__name__)

_IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")  # JPEG covers MPO (phone JPEGs)


def _header_dims(data: bytes) -> tuple[int, int] | None:
    """Width and height from the header of a PNG, GIF or BMP (for messages), else None."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if data.startswith((b"GIF87a", b"GIF89a")):
            return struct.unpack("<HH", data[6:10])
        if data.startswith(b"BM"):
            w, h = struct.unpack("<ii", data[18:26])
            return w, abs(h)
    except struct.error:
        pass
    return None


def _bomb_error(data: bytes, exc: Exception, max_pixels: int) -> InputError:
    dims = _header_dims(data)
    if dims is not None:
        w, h = dims
        return InputError("image_bomb", f"image is {w}x{h} = {w * h} pixels, above the limit of {max_pixels}")
    m = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{m.group(1)} pixels" if m else "too many pixels"
    return InputError("image_bomb", f"image is {size}, above the limit of {max_pixels} (decompression bomb)")


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if arr.ndim != 2 or arr.size == 0:
            raise InputError("garbage", f"image mode {mode} has unexpected data")
        arr = np.where(np.isfinite(arr), arr, 0.0)
        lo, hi = float(arr.min()), float(arr.max())
        if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535 and hi > 255):
            arr = arr / 257.0
        elif mode == "I" and lo >= 0 and hi <= 255:
            pass
        elif mode == "F" and lo >= 0 and hi <= 1:
            arr = arr * 255.0
        elif hi > lo:
            arr = (arr - lo) / (hi - lo) * 255.0
        else:
            arr = np.full_like(arr, min(max(lo, 0.0), 255.0))
        gray = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))
        return gray.convert("RGB")
    if mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "RGB":
        return im
    return im.convert("RGB")


def read_image(source: str | os.PathLike | bytes, *, max_bytes: int = DEFAULT_MAX_BYTES,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A fully decoded RGB :class:`PIL.Image.Image` from a path or bytes (PNG/JPEG/WebP/BMP/GIF/TIFF).

    The pixel count is checked against ``max_pixels`` from the header before decoding
    (``image_bomb``). Also raises ``empty``, ``too_large``, ``not_an_image``, ``truncated``,
    ``garbage`` (corrupt data). No other exception escapes for any input bytes.
    """
    data, _ = read_source(source, max_bytes, None)
    if not data:
        raise InputError("empty", "image is empty")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        logger.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES was set; resetting it so truncation is detected")
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    Image.init()  # register all plugins so that ``formats`` below can name them
    formats = [f for f in _IMAGE_FORMATS if f in Image.OPEN]
    try:
        im = Image.open(io.BytesIO(data), formats=formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(data, exc, max_pixels) from None
    except UnidentifiedImageError:
        kind = image_kind(data)
        if kind is not None:
            raise InputError("garbage", f"{kind} data is corrupt or truncated and cannot be opened") from None
        try:
            fmt3d = sniff_3d_format(data, None)
        except InputError:
            fmt3d = None
        if fmt3d is not None:
            raise InputError("not_an_image", f"got {article(fmt3d)} {fmt3d.upper()} 3D file, expected an image "
                                             "(PNG, JPEG, WebP, BMP, GIF or TIFF)") from None
        raise InputError("not_an_image", "data is not a PNG, JPEG, WebP, BMP, GIF or TIFF image") from None
    except Exception as exc:
        msg = f"{type(exc).__name__}: {str(exc)[:200]}"
        if isinstance(exc, EOFError) or "truncat" in str(exc).lower():
            raise InputError("truncated", f"image header is truncated: {msg}") from None
        raise InputError("garbage", f"cannot open image (corrupt or unsupported data): {msg}") from None
    try:
        w, h = im.size
        if w <= 0 or h <= 0:
            raise InputError("garbage", f"image has an invalid size {w}x{h}")
        if w * h > max_pixels:
            raise InputError("image_bomb", f"image is {w}x{h} = {w * h} pixels, above the limit of "
                                           f"{max_pixels}")
        try:
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb_error(data, exc, max_pixels) from None
        except (OSError, EOFError, SyntaxError, ValueError, struct.error, IndexError, TypeError,
                ZeroDivisionError, KeyError, OverflowError) as exc:
            msg = str(exc)
            if isinstance(exc, EOFError) or "truncated" in msg.lower() or "end of file" in msg.lower():
                raise InputError("truncated", f"{im.format} image is truncated: {msg[:200]}") from None
            raise InputError("garbage", f"{im.format} image data is corrupt: {msg[:200]}") from None
        try:
            transposed = ImageOps.exif_transpose(im)
            if transposed is not None:
                im = transposed
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise
        except Exception:  # a malformed EXIF block: keep the stored orientation
            logger.debug("ignoring unreadable EXIF orientation", exc_info=True)
        w, h = im.size
        if w * h > max_pixels:
            raise InputError("image_bomb", f"image is {w}x{h} = {w * h} pixels, above the limit of "
                                           f"{max_pixels}")
        out = _to_rgb(im)
        out.load()
        if out.mode != "RGB":
            out = out.convert("RGB")
        return out
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(data, exc, max_pixels) from None
    except MemoryError:
        raise InputError("image_bomb", "not enough memory to decode this image") from None
    except Exception as exc:
        logger.debug("unexpected error decoding an image", exc_info=True)
        raise InputError("garbage", f"cannot decode image: {type(exc).__name__}: {str(exc)[:200]}") from None
