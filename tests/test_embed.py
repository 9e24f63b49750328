"""relkd.embed: rationale vectors from a frozen sentence encoder, and the info stored beside them."""
from __future__ import annotations

import numpy as np
import pytest

from relkd.embed import encode_rationales, encoder_info

TEXTS = ["The title names the same brand and model, so it is strongly relevant.",
         "A phone case is an accessory, not the phone the shopper asked for.",
         "The title names the same brand and model, so it is strongly relevant."]


def test_vectors_are_float32_unit_rows_in_input_order():
    vecs = encode_rationales(TEXTS, "tiny:bert", max_length=32, batch_size=2, normalize=True)
    assert vecs.shape == (3, 32) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vecs[0], vecs[2], atol=1e-6) and not np.allclose(vecs[0], vecs[1], atol=1e-3)
    alone = encode_rationales(TEXTS[1:2], "tiny:bert", max_length=32, batch_size=2, normalize=True)
    assert np.allclose(alone[0], vecs[1], atol=1e-5)  # batching and padding do not change a vector
    raw = encode_rationales(TEXTS, "tiny:bert", max_length=32, normalize=False)
    # (tiny:bert, like MiniLM, ends in a Normalize module, so raw rows are unit too; the direction is
    # what must agree)
    assert np.allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), vecs, atol=1e-5)


def test_max_length_truncates():
    long = "kettle " * 200
    a = encode_rationales([long], "tiny:bert", max_length=16)
    b = encode_rationales([long + " completely different ending about shoes"], "tiny:bert", max_length=16)
    assert np.allclose(a, b, atol=1e-6)  # the difference lies beyond 16 tokens
    assert encode_rationales([], "tiny:bert", max_length=16).shape == (0, 32)


def test_encoder_info():
    assert encoder_info("tiny:bert", 32) == {"name": "tiny:bert", "max_length": 32, "dim": 32}


@pytest.mark.integration
def test_minilm_gives_384_dimensional_rationale_vectors():
    info = encoder_info("pypi:all-MiniLM-L6-v2", 256)
    assert info["dim"] == 384
    vecs = encode_rationales(TEXTS, "pypi:all-MiniLM-L6-v2", max_length=256)
    assert vecs.shape == (3, 384)
    # A real encoder puts the two same-meaning rationales closer than the different one.
    assert vecs[0] @ vecs[2] > vecs[0] @ vecs[1]
