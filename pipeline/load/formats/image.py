"""Images (PNG, JPEG, TIFF, WebP): the text of a scanned or photographed page, by OCR (ocr.py).

Identified by their bytes (any of these image kinds under any of these suffixes: a photo saved as
.png is still read; a .png that is a PDF is refused as `wrong_format`). Each frame of a TIFF is a
page; other formats are one page (an animation's first frame).

Bombs and bad images: the header's size is checked before anything is decoded (Pillow's Image.open
reads the header only): more than MAX_IMAGE_PIXELS pixels in a frame is `too_large`, so a
100,000 x 100,000 PNG of a few KB fails at once in bounded memory. At most MAX_IMAGE_PAGES frames
are read. A truncated image is `truncated`, one Pillow cannot read `corrupt`. Frames are decoded one
at a time, as the OCR pool takes them (at most ocr.WORKERS + 1 held), scaled to ocr.MAX_SIDE.
"""

from __future__ import annotations

import io
import warnings
from typing import Iterator, Optional

import kbingest.pipeline.load.formats.ocr as ocr  # not `from ...formats import`: no cycle through the package (tests/test_architecture.py)
from kbingest.pipeline.load.formats.base import Extracted, Format, LoadError, NoText
from kbingest.pipeline.load.formats.mdtext import plain_lines
from kbingest.pipeline.load.formats.sniff import describe

MAX_IMAGE_PIXELS = 60_000_000  # per frame (an A4 page at 600 dpi is 35 MP); larger headers: not decoded
MAX_IMAGE_PAGES = 1_000  # frames of a multi-page TIFF read; beyond, a warning
MIN_SIDE = 32  # an image narrower or lower than this holds no line of text worth reading:
MIN_PIXELS = 4_096  # nor does one of fewer pixels (64 x 64): both skipped without running OCR

_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*")


def is_image(head: bytes) -> bool:
    return head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _too_large(w: int, h: int) -> LoadError:
    return LoadError(
        "too_large",
        f"the image is {w:,} x {h:,} pixels (limit {MAX_IMAGE_PIXELS:,} pixels a page): not decoded, not loaded",
    )


def _open(data: bytes):
    """The image with only its header read; LoadError for bombs and what Pillow cannot identify."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        w, h = _header_size(data)
        raise _too_large(w, h) from None
    except UnidentifiedImageError:
        raise LoadError("corrupt", "the image is damaged: its header cannot be read") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        raise LoadError("truncated" if _truncated(e) else "corrupt", f"the image cannot be read ({_why(e)})") from None
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS:
        raise _too_large(w, h)
    return im


def _header_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR (for the message of a bomb Pillow refused); else 0 x 0."""
    if data.startswith(b"\x89PNG") and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return 0, 0


def _truncated(e: BaseException) -> bool:
    s = str(e).lower()
    return (
        isinstance(e, EOFError)
        or "truncated" in s
        or "premature end" in s
        or "broken data stream" in s
        or "not enough data" in s
        or "image data is incomplete" in s
    )


def _why(e: BaseException) -> str:
    s = " ".join(str(e).split())[:120]
    return s or type(e).__name__


def _frames(im, count: int) -> Iterator[tuple[int, object]]:
    """Frame i as a grayscale array at most ocr.MAX_SIDE on its longer side, one at a time."""
    import numpy as np
    from PIL import ImageOps

    for i in range(count):
        try:
            if i:
                im.seek(i)
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise _too_large(w, h)
            if im.format == "JPEG":
                im.draft("L", (ocr.MAX_SIDE, ocr.MAX_SIDE))  # decode at a reduced scale where JPEG allows
            im.load()
            page = ImageOps.exif_transpose(im) if i == 0 else im  # a photo taken sideways stands upright
            page = page.convert("L")
            if max(page.size) > ocr.MAX_SIDE:
                page.thumbnail((ocr.MAX_SIDE, ocr.MAX_SIDE))
            arr = np.asarray(page, dtype=np.uint8)
            del page
        except LoadError:
            raise
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise LoadError(
                "truncated" if _truncated(e) else "corrupt",
                f"the image cannot be decoded{f' (frame {i + 1})' if count > 1 else ''}: {_why(e)}",
            ) from None
        yield i, arr


class ImageFormat(Format):
    name = "image"
    suffixes = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")
    description = (
        "text by OCR (offline, --ocr): each TIFF frame a page, the page of every chunk; confidence under 80% flagged"
    )

    def identify(self, head: bytes) -> Optional[str]:
        return None if is_image(head) else describe(head)

    def extract(self, data: bytes, *, path: str) -> Extracted:
        sess = ocr.current()
        im = _open(data)
        try:
            w, h = im.size
            if min(w, h) < MIN_SIDE or w * h < MIN_PIXELS:  # an icon, a bullet, a badge: OCR is not run
                raise NoText(
                    f"an image of {w} x {h} pixels is too small to hold text (an icon?): not read by OCR, not loaded"
                )
            if sess.mode == "off":
                raise LoadError("no_text_layer", "an image has no text layer and --ocr off reads none: not loaded")
            count = getattr(im, "n_frames", 1) if im.format == "TIFF" else 1
            if not ocr.available():
                raise ocr.unavailable("an image")
            results = list(ocr.read_pages(_frames(im, min(count, MAX_IMAGE_PAGES)), sess))
        finally:
            im.close()
        parts, starts, offset, confidence = [], [], 0, []
        for r in results:
            md = plain_lines(r.page.text) if r.page is not None else ""
            starts.append(offset)
            parts.append(md)
            offset += len(md) + 2
            confidence.append((r.page.confidence or 0.0) if r.page is not None else 0.0)
        warnings_ = [r.warning for r in results if r.warning]
        warnings_ += ocr.low_confidence(results, "page" if count > 1 else "image")
        if count > MAX_IMAGE_PAGES:
            warnings_.append(f"only the first {MAX_IMAGE_PAGES} of {count} frames were read")
        empty = sum(1 for r in results if r.page is not None and not r.page.text.strip())
        if results and empty == len(results):  # read without fault, no text: a logo or a photo, not a broken file
            what = "the image" if len(results) == 1 else f"any of the {len(results)} pages of the image"
            raise NoText(f"OCR found no text in {what} (a logo, a diagram or a photo?): not loaded")
        if empty and len(results) > 1 and empty < len(results):
            warnings_.append(f"OCR found no text on {empty} of {len(results)} pages")
        return Extracted(
            text="\n\n".join(parts),
            markdown=True,
            page_starts=tuple(starts),
            warnings=tuple(warnings_),
            page_ocr=tuple(confidence),
        )


IMAGE = ImageFormat()
