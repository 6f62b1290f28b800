"""Facts about one image from its bytes: format, size, sha256, difference hash, JPEG thumbnail."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageFile

from s1mmalign.config import IngestConf

ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass(frozen=True)
class ImageFacts:
    """What ingest records about an image; status is "ok" or a quarantine reason."""

    status: str
    detail: str | None = None
    sha256: str | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    size: int | None = None
    dhash: int | None = None
    thumbnail: bytes | None = None
    thumbnail_width: int | None = None
    thumbnail_height: int | None = None


def dhash64(gray9x8: Image.Image) -> int:
    """64-bit difference hash of a 9x8 grayscale image, as a signed 64-bit integer."""
    px = gray9x8.tobytes()
    bits = 0
    for row in range(8):
        base = row * 9
        for col in range(8):
            bits = (bits << 1) | (px[base + col] > px[base + col + 1])
    return bits - (1 << 64) if bits >= 1 << 63 else bits


def _rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        flat = Image.new("RGB", im.size, (255, 255, 255))
        flat.paste(im, mask=im.getchannel("A"))
        return flat
    return im if im.mode == "RGB" else im.convert("RGB")


def analyze(data: bytes, policy: IngestConf) -> ImageFacts:
    """Decode-check an image and compute its facts (limits and thumbnail from the ingest conf section);
    a bad image gives a status, never an exception."""
    size = len(data)
    if size == 0:
        return ImageFacts("image_corrupt", "zero bytes", size=0)
    if size > policy.max_image_bytes:
        return ImageFacts("image_too_large", f"{size} bytes > {policy.max_image_bytes}", size=size)
    sha = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = policy.max_image_pixels
            with Image.open(io.BytesIO(data)) as im:
                # MPO (what phones and stereo cameras write) is a JPEG with more frames after the first:
                # the first frame is the image, so it is a JPEG here.
                fmt = "JPEG" if im.format == "MPO" else im.format
                if fmt not in policy.formats:
                    return ImageFacts("image_corrupt", f"format {fmt} not accepted", sha, fmt, size=size)
                width, height = im.size
                if width * height > policy.max_image_pixels:
                    return ImageFacts("image_too_large", f"{width}x{height} pixels > {policy.max_image_pixels}",
                                      sha, fmt, width, height, size)
                if fmt == "JPEG":
                    im.draft("RGB", (policy.thumbnail_px, policy.thumbnail_px))
                im.load()  # the decode check: truncated or corrupt data raises here
                thumb = _rgb(im)
                thumb.thumbnail((policy.thumbnail_px, policy.thumbnail_px), Image.Resampling.BILINEAR,
                                reducing_gap=2.0)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return ImageFacts("image_too_large", str(exc)[:300], sha, size=size)
    except Image.UnidentifiedImageError:
        return ImageFacts("image_corrupt", "not an image Pillow can identify", sha, size=size)
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        return ImageFacts("image_corrupt", f"{type(exc).__name__}: {str(exc)[:300]}", sha, size=size)
    dhash = dhash64(thumb.convert("L").resize((9, 8), Image.Resampling.BILINEAR))
    out = io.BytesIO()
    thumb.save(out, "JPEG", quality=policy.thumbnail_quality)
    return ImageFacts("ok", None, sha, fmt, width, height, size, dhash, out.getvalue(), *thumb.size)
