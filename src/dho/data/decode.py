"""How an image file becomes RGB pixels: one stated policy, and a record of what it had to convert.

The policy (every image dho reads goes through :func:`decode_bytes`):

- A file that is empty, that Pillow cannot identify, that is truncated, or that fails to decode in
  full is *bad*: it is reported and never half-decoded (truncated files are not padded with grey).
- The EXIF orientation tag is applied, so the pixels stand the way image viewers show them.
- Animated or multi-page files: the first frame.
- Transparency (RGBA, LA, PA, or a palette, grey or RGB image with a transparent colour) is
  composited onto white, then dropped. White because transparent images (logos, product shots,
  icons) are drawn for white pages; on black, dark foregrounds would vanish.
- 16-bit and 32-bit integer images are scaled to 8 bits (value / 257, so 65535 -> 255, values
  outside [0, 65535] clipped); 32-bit float images are clipped to [0, 255].
- CMYK, YCbCr, LAB and HSV images: Pillow's conversion to RGB (embedded ICC profiles are ignored).
- Grayscale and 1-bit images: the one channel repeated three times.
- Size: an image of more than ``MAX_PIXELS`` pixels (64 million, e.g. 8000 x 8000) is *bad*
  (``too_large``), refused from its header before any pixel is decoded (Pillow's own bomb warning
  is not raised: this limit comes first). `dho data check` notes the others that are ``huge``
  (above ``HUGE_PIXELS``, 24 million: full-size photos of recent phones and larger) or ``tiny`` (a
  side under ``TINY_SIDE``, 32 px): both are scaled to the input size like any other image, but a
  huge one costs memory and time at every decode, and a tiny one has little to show.
- Time: a file whose decode takes more than ``DECODE_SECONDS`` (30 s) is *bad* (``timeout``), in
  training as in `dho data check`. In the main thread of a process whose SIGALRM is free, a timer
  stops the decode at the limit; elsewhere (another thread, a SIGALRM in use) the limit is checked
  once the decode ends.

Run as a script (``python -I decode.py``) this module is the audit's worker: it reads one
JSON-encoded path per line on stdin and answers one JSON line per file on stdout. It imports only
Pillow and NumPy, so a worker starts in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import stat
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from time import monotonic

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["BadImage", "content_digest", "decode_bytes", "inspect_file", "open_rgb", "to_rgb"]

ORIENTATION = 0x0112  # EXIF tag
MAX_PIXELS = 64_000_000  # above: refused (too_large), from the header
HUGE_PIXELS = 24_000_000  # above: decoded, with a "huge" note
TINY_SIDE = 32  # a side below: decoded, with a "tiny" note
DECODE_SECONDS = 30.0  # a decode that takes longer: refused (timeout)
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


class BadImage(ValueError):
    """A file that cannot be decoded by the policy; ``kind`` is empty, truncated, undecodable, ..."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self) -> tuple:  # DataLoader workers and process pools pickle errors
        return type(self), (self.kind, str(self))


class _Expired(BaseException):  # not an Exception: Pillow's own handlers must not swallow it
    pass


@contextmanager
def _deadline(seconds: float | None) -> Iterator[None]:
    """Raise :class:`_Expired` inside the block once it has run ``seconds``, where a timer can."""
    free = (seconds is not None and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)
            and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0))
    if not free:
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise _Expired

    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, float(seconds or 0.0))  # seconds is set when free
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


def content_digest(data: bytes) -> str:
    """The hash that identifies a file's content (duplicates across splits)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def to_rgb(image: Image.Image) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """A decoded PIL image -> uint8 [H, W, 3] by the policy above, and (kind, text) notes."""
    notes: list[tuple[str, str]] = []
    return _convert(image, notes), notes


def _convert(image: Image.Image, notes: list[tuple[str, str]]) -> np.ndarray:
    orientation = image.getexif().get(ORIENTATION, 1)
    if orientation in range(2, 9):
        image = ImageOps.exif_transpose(image)
        notes.append(("exif_rotation", f"EXIF orientation {orientation} applied"))
    mode = image.mode
    if mode in HIGH_BIT_MODES:
        values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        gray = np.round(values / 257).astype(np.uint8)
        notes.append(("high_bit_depth", f"{mode} scaled to 8 bits"))
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        gray = np.clip(np.asarray(image, dtype=np.float64), 0, 255).round().astype(np.uint8)
        notes.append(("high_bit_depth", "32-bit float clipped to [0, 255]"))
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ALPHA_MODES or "transparency" in image.info:
        kind = "palette_transparency" if mode in ("P", "PA") else "alpha"
        notes.append((kind, f"{mode} with transparency composited on white"))
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    elif mode in ("L", "1"):
        notes.append(("grayscale", f"grayscale ({mode}) repeated to RGB"))
    elif mode == "CMYK":
        notes.append(("cmyk", "CMYK converted to RGB (no ICC profile)"))
    elif mode not in ("RGB", "P"):
        notes.append(("other_mode", f"mode {mode} converted to RGB"))
    return np.array(image.convert("RGB"), dtype=np.uint8)


def decode_bytes(data: bytes, name: str = "", limit: float | None = DECODE_SECONDS) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """uint8 [H, W, 3] pixels by the policy above, and (kind, text) notes on what was converted.
    ``name`` (e.g. the file's path) starts the message of a :class:`BadImage`; ``limit``: the
    seconds the decode may take (None: no limit here, the caller keeps one)."""
    where = f"{name}: " if name else ""
    if not data:
        raise BadImage("empty", f"{where}empty file (0 bytes)")
    notes: list[tuple[str, str]] = []
    started = monotonic()
    try:
        with warnings.catch_warnings(), _deadline(limit):
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PIXELS, below Pillow's, decides
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise BadImage("too_large", f"{where}{width} x {height} = {width * height / 1e6:.0f} million pixels, "
                                                f"above the limit of {MAX_PIXELS / 1e6:.0f} million; resize it")
                frames = getattr(image, "n_frames", 1)
                image.load()
                if frames > 1:
                    notes.append(("multi_frame", f"first of {frames} frames"))
                pixels = _convert(image, notes)
    except _Expired:  # raised as the timer's cleanup began: finish it
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        pixels = None
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("undecodable", f"{where}not an image format Pillow can read") from None
    except Image.DecompressionBombError as err:
        raise BadImage("too_large", f"{where}{err}") from None
    except Exception as err:
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        kind = "truncated" if "truncat" in text.lower() or isinstance(err, EOFError) else "undecodable"
        raise BadImage(kind, f"{where}{kind} ({text})") from None
    if pixels is None or (limit is not None and monotonic() - started > limit):
        raise BadImage("timeout", f"{where}not decoded within {limit:g} s")
    return pixels, notes


def open_rgb(path: str | Path) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """:func:`decode_bytes` of a file; an unreadable file, or one that is not a regular file (a
    pipe, a device, a link to one: reading it could block or never end), is a BadImage too."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise BadImage("not_a_file", f"{path}: not a regular file (a pipe, a device or a link to one)")
        data = Path(path).read_bytes()
    except OSError as err:
        raise BadImage("unreadable", f"{path}: cannot read ({err.strerror or err})") from None
    return decode_bytes(data, str(path))


def inspect_file(path: str) -> dict:
    """One file's report: ok, the reason when bad, notes, size, mode and content hash (the audit's
    worker: the audit keeps the time limit)."""
    record: dict = {"path": path}
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):  # /dev/zero would be read forever;
            return {**record, "ok": False, "kind": "not_a_file", "error": "not a regular file (a device or a link to one)"}
        data = Path(path).read_bytes()  # a pipe blocks here: the audit's time limit reports it
    except OSError as err:
        return {**record, "ok": False, "kind": "unreadable", "error": f"cannot read ({err.strerror or err})"}
    record["hash"] = content_digest(data)
    try:
        pixels, notes = decode_bytes(data, limit=None)  # the report names the file; the audit keeps the time
    except BadImage as err:
        return {**record, "ok": False, "kind": err.kind, "error": str(err)}
    height, width = pixels.shape[:2]
    if width * height > HUGE_PIXELS:
        notes.append(("huge", f"{width} x {height}: {width * height / 1e6:.0f} million pixels to decode each time"))
    if min(width, height) < TINY_SIDE:
        notes.append(("tiny", f"{width} x {height}: a side under {TINY_SIDE} px, upscaled to the input size"))
    return {**record, "ok": True, "notes": notes, "size": [width, height]}


def _serve() -> None:
    for line in sys.stdin:
        sys.stdout.write(json.dumps(inspect_file(json.loads(line))) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve()
