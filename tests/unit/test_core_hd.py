"""hd encoding on inputs that exercise every counting path, and similarity's inputs."""

from __future__ import annotations

import base64
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.core import hd_encode, hd_similarity, run
from app.core.babel import ALPHABET
from app.ops.bench.core import naive_hd_encode

_rng = random.Random(7)
CJK = "".join(chr(0x4E00 + _rng.randrange(300)) for _ in range(700))

TEXTS = {
    # > 512 distinct trigrams: several blocks of the bit-sliced count.
    "random page": "".join(_rng.choice(ALPHABET) for _ in range(3200)),
    # Few distinct trigrams repeated ~1,600 times: counts with many bits set.
    "repeated pair": "ab" * 1600,
    # Code points above the lookup table and > 128 distinct characters: the sorting paths.
    "cjk": CJK,
    # More distinct characters than whole-text tables are built for: per-block tables.
    "many characters": "".join(chr(0x4E00 + i) for i in range(1500)) * 2,
    "mixed": "Ünïcödé  text\twith\u00a0odd\u2003spaces 🙂🙂 and e\u0301 vs é",
}


@pytest.mark.parametrize("name", TEXTS)
def test_matches_the_per_trigram_definition(name: str) -> None:
    assert hd_encode(TEXTS[name]) == naive_hd_encode(TEXTS[name])


def test_largest_text_is_encoded() -> None:
    text = ("the queue keeps moving " * 3000)[:65_536]
    result = run("encode", {"text": text, "codec": "hd"})
    assert result["trigrams"] == len(text) == 65_536  # no whitespace to collapse or strip
    assert len(base64.b64decode(result["vector"])) == 1250


def test_nfc_and_whitespace_do_not_change_the_vector() -> None:
    assert hd_encode("cafe\u0301  au\nlait") == hd_encode("Café au lait ")


def test_similarity_takes_bytes_or_base64() -> None:
    packed, _ = hd_encode("the cat sat on the mat")
    other = run("encode", {"text": "the dog sat on the log", "codec": "hd"})["vector"]
    assert hd_similarity(packed, other) == hd_similarity(base64.b64encode(packed).decode(), other)
    assert 0.0 <= hd_similarity(packed, other) < 1.0


@pytest.mark.parametrize("bad", [b"short", "not base64!", base64.b64encode(b"x" * 1249).decode()])
def test_similarity_rejects_malformed_vectors(bad: bytes | str) -> None:
    with pytest.raises(ValueError, match="vector"):
        hd_similarity(bad, bytes(1250))


def test_blank_text_is_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        hd_encode(" \n ")


def test_threads_get_identical_results() -> None:
    """Each thread has its own work memory: concurrent encodes must not mix."""
    texts = [TEXTS["random page"][i:] + TEXTS["repeated pair"][:i] for i in range(0, 1600, 100)]
    expected = [hd_encode(t) for t in texts]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            assert list(pool.map(hd_encode, texts)) == expected
