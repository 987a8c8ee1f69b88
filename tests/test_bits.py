"""Per-image correctness packed as text (ffnn/bits.py)."""

import base64
import re

import numpy as np
import pytest

from ffnn.bits import MAX_TAG_CHARS, pack_correct, unpack_correct


@pytest.mark.parametrize("n", [1, 7, 8, 9, 10000])
def test_round_trip(n):
    rng = np.random.default_rng(n)
    bits = rng.random(n) < 0.5
    text = pack_correct(bits)
    assert text.startswith(f"{n}:") and "\n" not in text
    assert base64.b64decode(text.split(":", 1)[1]) == np.packbits(bits).tobytes()  # the documented format
    back = unpack_correct(text)
    assert back.dtype == np.bool_ and back.shape == (n,) and np.array_equal(back, bits)


def test_the_format_is_big_endian_packbits_in_standard_base64():
    assert pack_correct(np.array([True, False, True])) == "3:oA=="  # 0b10100000
    assert pack_correct(np.ones(16, bool)) == "16://8="
    assert unpack_correct("3:oA==").tolist() == [True, False, True]


def test_mnist_test_set_fits_a_tag():
    text = pack_correct(np.ones(10000, bool))
    assert len(text) == 6 + 1668 <= MAX_TAG_CHARS  # "10000:" and 1250 bytes in base64 (417 groups of 4)


@pytest.mark.parametrize("text, message", [
    ("", "expected '<N>:<base64>'"),
    ("oA==", "expected '<N>:<base64>'"),
    ("x:oA==", "expected '<N>:<base64>'"),
    ("-3:oA==", "expected '<N>:<base64>'"),
    (" 3:oA==", "expected '<N>:<base64>'"),
    ("3:oA=", "not base64"),
    ("3:o*==", "not base64"),
    ("3:oKA=", "2 bytes for 3 bits (expected 1)"),
    ("9:oA==", "1 bytes for 9 bits (expected 2)"),
    ("0:oA==", "1 bytes for 0 bits (expected 0)"),
    ("3:oQ==", "padding bits after bit 3 are not zero"),
])
def test_malformed_text_raises_value_error(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        unpack_correct(text)


def test_missing_tag_and_wrong_input_raise_value_error():
    with pytest.raises(ValueError, match="expected a str"):
        unpack_correct(float("nan"))  # a run without the tag, as pandas gives it
    with pytest.raises(ValueError, match="1-D bool array"):
        pack_correct(np.array([1, 0, 1]))
    with pytest.raises(ValueError, match="1-D bool array"):
        pack_correct(np.ones((2, 2), bool))


def test_max_tag_chars_is_mlflows_limit():
    from mlflow.utils.validation import MAX_TAG_VAL_LENGTH
    assert MAX_TAG_CHARS == MAX_TAG_VAL_LENGTH
    assert len(pack_correct(np.ones(47_000, bool))) <= MAX_TAG_CHARS < len(pack_correct(np.ones(48_000, bool)))
