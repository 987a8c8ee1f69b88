"""Per-image correctness as text: N bits packed and base64-encoded, small enough for an MLflow tag.

A FINISHED run records which test images it classified correctly, so that a
report can compare runs image by image. ``pack_correct`` turns a bool array of
length N into ``"<N>:<base64 of np.packbits(bits)>"`` (numpy's default big bit
order, standard base64 without newlines): about N / 6 characters, 1.7 KB for
MNIST's 10,000 test images. ``unpack_correct`` is its inverse.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

# MLflow's limit on a run tag's value, in characters (MAX_TAG_VAL_LENGTH): a packed array of more than about
# 47,000 bits does not fit
MAX_TAG_CHARS = 8000


def pack_correct(correct: np.ndarray) -> str:
    """A 1-D bool array as ``"<N>:<base64 of np.packbits(correct)>"``.

    ``pack_correct(np.array([True, False, True])) == "3:oA=="``
    """
    bits = np.asarray(correct)
    if bits.ndim != 1 or bits.dtype != np.bool_:
        raise ValueError(f"pack_correct takes a 1-D bool array, not {bits.dtype} of shape {bits.shape}")
    return f"{len(bits)}:{base64.b64encode(np.packbits(bits).tobytes()).decode('ascii')}"


def unpack_correct(text: str) -> np.ndarray:
    """The bool array of length N that ``pack_correct`` wrote as ``text``; ValueError if ``text`` is malformed.

    ``unpack_correct("3:oA==").tolist() == [True, False, True]``
    """
    if not isinstance(text, str):  # e.g. NaN: a run without the tag, as pandas gives it
        raise ValueError(f"packed bits: expected a str, not {type(text).__name__} {text!r}")
    head, sep, body = text.partition(":")
    if not sep or not head.isascii() or not head.isdigit():
        raise ValueError(f"packed bits {_short(text)}: expected '<N>:<base64>', N a count of bits")
    n = int(head)
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"packed bits {_short(text)}: not base64 ({e})") from None
    want = (n + 7) // 8
    if len(raw) != want:
        raise ValueError(f"packed bits {_short(text)}: {len(raw)} bytes for {n} bits (expected {want})")
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))
    if bits[n:].any():
        raise ValueError(f"packed bits {_short(text)}: padding bits after bit {n} are not zero")
    return bits[:n].astype(bool)


def _short(text: str, limit: int = 40) -> str:
    """``text`` quoted, cut to ``limit`` characters for an error message: ``_short("ab", 1) == "'a...'"``."""
    return repr(text[:limit] + "...") if len(text) > limit else repr(text)
