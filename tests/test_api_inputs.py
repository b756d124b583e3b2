"""What users hand the Python API: images and texts in every form, accepted with the same numbers as the
explicit path, or refused with a message that names the fix. Also the tokenizer on very long words, id for
id against OpenAI's SimpleTokenizer, and in time that grows like n log n, not n^2.
"""
import functools
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import mini_clip
from mini_clip import preprocess, relevance
from mini_clip import tokenizer as tk

TEXTS = ["a photo of a cat", "a red square"]
FIELDS = ("logits", "probs", "image", "image_matrix", "text_matrix", "tokens")


@pytest.fixture(scope="module")
def model(tiny_weights):
    return mini_clip.load(tiny_weights)[0]


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A seeded random 50 x 40 RGB picture (not square: the crop matters)."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def assert_same(got, want):
    """Two Relevance results with bit-identical numbers."""
    for field in FIELDS:
        assert torch.equal(getattr(got, field), getattr(want, field)), field
    assert len(got.text) == len(want.text) and all(torch.equal(a, b) for a, b in zip(got.text, want.text))
    assert got.labels == want.labels


# ---------------------------------------------------------------------------------------------------------
# relevance: images


def test_pil_path_and_array_equal_the_preprocessed_tensor(model, photo, tmp_path):
    size = model.visual.input_resolution
    want = relevance(model, preprocess(photo, size)[None], TEXTS)
    path = tmp_path / "photo.png"
    photo.save(path)  # PNG: lossless, so the file holds the same pixels
    for image in (photo, path, str(path), np.asarray(photo), [photo]):
        assert_same(relevance(model, image, TEXTS), want)


def test_a_list_of_images_is_one_batch(model, photo, tmp_path):
    size = model.visual.input_resolution
    other = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    path = tmp_path / "other.png"
    other.save(path)
    want = relevance(model, torch.stack([preprocess(photo, size), preprocess(other, size)]), TEXTS)
    assert_same(relevance(model, [photo, path], TEXTS), want)
    assert_same(relevance(model, [preprocess(photo, size), other], TEXTS), want)  # tensors mixed in


def test_raw_pixel_tensors_are_refused_with_the_fix(model, photo):
    size = model.visual.input_resolution
    pixels = torch.from_numpy(np.array(photo.resize((size, size)))).permute(2, 0, 1).contiguous()
    with pytest.raises(ValueError,
                       match="uint8 tensor of raw pixels: pass a PIL image or a path.*preprocess"):
        relevance(model, pixels, TEXTS)
    with pytest.raises(ValueError, match=r"lie in \[0, \d+\]: raw pixels.*preprocess that mini_clip.load"):
        relevance(model, pixels.float(), TEXTS)  # the float in [0, 255] that looks like pixels
    bright = preprocess(Image.new("RGB", (size, size), "white"), size)  # all > 0: still normalised
    relevance(model, bright, TEXTS)


def test_non_finite_images_and_other_types_are_refused(model, photo):
    size = model.visual.input_resolution
    image = preprocess(photo, size)
    image[0, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):  # not "weights are damaged"
        relevance(model, image, TEXTS)
    with pytest.raises(TypeError, match="a PIL image, a path, a uint8 numpy array.*got NoneType"):
        relevance(model, None, TEXTS)


def test_empty_batches_are_refused(model):
    size = model.visual.input_resolution
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\), B >= 1, got \(0, 3, 32, 32\)"):
        relevance(model, torch.zeros(0, 3, size, size), TEXTS)
    with pytest.raises(ValueError, match="no images given: pass at least one"):
        relevance(model, [], TEXTS)
    with pytest.raises(ValueError, match="no texts given: pass at least one string"):
        relevance(model, torch.zeros(3, size, size), [])


# ---------------------------------------------------------------------------------------------------------
# relevance: token ids


@pytest.fixture(scope="module")
def ids():
    """Two rows of token ids, SimpleTokenizer's numbers typed in: 'a photo', 'cat'."""
    rows = torch.zeros(2, 77, dtype=torch.long)
    rows[0, :4] = torch.tensor([tk.SOT, 320, 1125, tk.EOT])
    rows[1, :3] = torch.tensor([tk.SOT, 2368, tk.EOT])
    return rows


def test_ids_as_rows_of_ints_arrays_and_int32_equal_the_long_tensor(model, ids):
    image = torch.zeros(3, 32, 32)
    want = relevance(model, image, ids)
    assert want.labels == [["a", "photo"], ["cat"]]  # the ids typed in are what they claim
    for form in (ids.tolist(), ids.numpy(), ids.int(), [row[:5].tolist() for row in ids]):
        got = relevance(model, image, form)
        for field in ("logits", "image"):
            assert torch.equal(getattr(got, field), getattr(want, field)), (type(form), field)


def test_ids_outside_the_vocabulary_name_the_row(model, ids):
    for bad in (-1, 49408, 10**6):
        tokens = ids.clone()
        tokens[1, 1] = bad
        with pytest.raises(ValueError, match=f"text 1 has token id {bad}, outside the model's vocabulary "
                                             r"\[0, 49408\): make ids with mini_clip.tokenize"):
            relevance(model, torch.zeros(3, 32, 32), tokens)


def test_rows_without_end_of_text_name_the_row(model, ids):
    tokens = ids.clone()
    tokens[1, 2] = 0
    with pytest.raises(ValueError, match="text 1 has no end-of-text token"):
        relevance(model, torch.zeros(3, 32, 32), tokens)


def test_float_ragged_and_mixed_ids_are_refused(model, ids):
    image = torch.zeros(3, 32, 32)
    with pytest.raises(ValueError, match="token ids must be integers, got a float32 tensor.*ids.long()"):
        relevance(model, image, ids.float())
    with pytest.raises(ValueError, match="all of one length"):
        relevance(model, image, [ids[0, :4].tolist(), ids[1, :3].tolist()])
    with pytest.raises(TypeError, match="not a mix; got list, str"):
        relevance(model, image, ["a cat", ids[0].tolist()])
    with pytest.raises(TypeError, match="texts must be strings, or rows of token ids.*got NoneType, str"):
        relevance(model, image, ["a cat", None])
    with pytest.raises(ValueError, match=r"shape \(texts, <= 77\), at least one text, got \(0, 77\)"):
        relevance(model, image, ids[:0])


# ---------------------------------------------------------------------------------------------------------
# preprocess


def test_preprocess_takes_uint8_arrays_as_pil_would(photo):
    rgb = np.asarray(photo)
    assert torch.equal(preprocess(rgb, 32), preprocess(photo, 32))
    grey = rgb[:, :, 0].copy()
    assert torch.equal(preprocess(grey, 32), preprocess(Image.fromarray(grey, "L"), 32))
    rgba = np.concatenate([rgb, np.full((40, 50, 1), 7, np.uint8)], axis=2)
    assert torch.equal(preprocess(rgba, 32), preprocess(photo, 32))  # alpha dropped, as OpenAI's convert
    assert torch.equal(preprocess(photo, np.int64(32)), preprocess(photo, 32))


def test_preprocess_refuses_what_it_cannot_read(photo):
    with pytest.raises(ValueError, match=r"uint8 pixels of shape.*got float32 \(40, 50, 3\).*astype"):
        preprocess(np.asarray(photo, dtype=np.float32) / 255, 32)
    with pytest.raises(ValueError, match=r"got uint8 \(3, 40, 50\)"):
        preprocess(np.asarray(photo).transpose(2, 0, 1), 32)
    with pytest.raises(TypeError, match="not a tensor"):
        preprocess(torch.zeros(3, 40, 50), 32)
    with pytest.raises(TypeError, match="got NoneType"):
        preprocess(None, 32)
    with pytest.raises(ValueError, match=r"no pixels \(0 x 0\)"):
        preprocess(Image.new("RGB", (0, 0)), 32)


@pytest.mark.parametrize("size, error", [(0, ValueError), (-1, ValueError), (2.5, TypeError),
                                         ("224", TypeError), (True, TypeError)])
def test_preprocess_size_must_be_a_positive_int(photo, size, error):
    with pytest.raises(error, match="size must be"):
        preprocess(photo, size)


# ---------------------------------------------------------------------------------------------------------
# tokenize: inputs


@pytest.mark.parametrize("texts, message", [([None], "text 0 is NoneType, not str: pass strings"),
                                            (["a", b"cat"], r"text 1 is bytes, not str: decode it first"),
                                            (["a", "b", 3], "text 2 is int, not str")])
def test_tokenize_names_a_text_that_is_not_a_string(texts, message):
    with pytest.raises(TypeError, match=message):
        tk.tokenize(texts)
    with pytest.raises(TypeError, match=message):
        tk.Tokenizer().tokenize(texts)


def test_tokenize_context_length_must_be_an_int_of_two_or_more():
    for bad in (2.5, "77", None):
        with pytest.raises(TypeError, match="context_length must be an int"):
            tk.tokenize("a cat", bad)
    with pytest.raises(ValueError, match=r"context_length must hold start and end of text \(>= 2\); got 1"):
        tk.tokenize("a cat", 1)
    assert torch.equal(tk.tokenize("a cat", np.int64(5)), tk.tokenize("a cat", 5))


def test_tokenize_of_no_texts_is_empty_as_openais():
    # clip.tokenize([]): torch.zeros(0, context_length) (its loop over texts does nothing)
    assert tk.tokenize([]).shape == (0, 77) and tk.tokenize([], 5).shape == (0, 5)


# ---------------------------------------------------------------------------------------------------------
# tokenizer: long words


@pytest.fixture(scope="module")
def ref(openai_tokenizer):
    return openai_tokenizer.SimpleTokenizer()


def random_word(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


ALPHABETS = ["abcdefghijklmnopqrstuvwxyz", "ab", "aab", "éèêàç", "日本語中文字", "!?.-#", "ahoj"]


def test_long_words_match_openai(ref):
    rng = random.Random(0)
    for alphabet in ALPHABETS:
        word = random_word(rng, alphabet, 2000)
        ids = ref.encode(word)
        assert tk.Tokenizer().encode(word) == ids, alphabet
        want = [tk.SOT, *ids[:75], tk.EOT]  # clip.tokenize(truncate=True): the first 76, the last set to EOT
        assert tk.tokenize(f"{word} and more words", truncate=True)[0].tolist() == want


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(ALPHABETS).flatmap(lambda a: st.text(st.sampled_from(a), min_size=1, max_size=300)))
def test_random_words_match_openai_bpe(openai_tokenizer, word):
    # OpenAI's bpe: one pair rank per pass, all its occurrences left to right, then a new pass
    spelled = word.encode("utf-8").decode("latin-1").translate(tk.default_tokenizer().spell)
    assert tk.default_tokenizer().bpe(spelled) == _shared_ref(openai_tokenizer).bpe(spelled).split(" ")


@functools.lru_cache(maxsize=None)
def _shared_ref(module):
    """One SimpleTokenizer for all hypothesis examples (hypothesis re-runs the test body, not fixtures)."""
    return module.SimpleTokenizer()


def test_merges_in_any_order_match_openai_bpe(openai_tokenizer):
    # In CLIP's file every merge ranks after those that make its two pieces, so a merge never creates a pair
    # of lower rank than its own. Shuffled ranks do: then OpenAI's rule, all occurrences of the lowest pair
    # before any pair they form, decides ('a b a b' with (ab, a) ranked before (a, b) gives 'ab ab').
    ours, ref, rng = tk.Tokenizer(), openai_tokenizer.SimpleTokenizer(), random.Random(0)
    merges = [pair for pair in ours.merges if set("".join(pair)) <= set("abc</w>")]  # 122 pairs
    for _ in range(1500):
        rng.shuffle(merges)
        ours.merges, ours.ranks = merges, {pair: rank for rank, pair in enumerate(merges)}
        ref.bpe_ranks, ref.cache = dict(ours.ranks), {}
        word = random_word(rng, "abc", rng.randint(1, 30))
        assert ours.bpe(word) == ref.bpe(word).split(" "), (word, merges)


@pytest.mark.parametrize("context_length", [2, 3, 8, 77])
def test_truncation_stops_early_with_openais_ids(ref, context_length):
    text = "supercalifragilistic expialidocious " * 40
    ids = [tk.SOT, *ref.encode(text), tk.EOT]
    want = ids[:context_length - 1] + [tk.EOT]
    assert tk.tokenize(text, context_length, truncate=True)[0].tolist() == want


class CountingRanks(dict):
    """The merges' ranks, counting every look-up: the work BPE does, whatever the machine's speed."""
    lookups = 0

    def __getitem__(self, key):
        CountingRanks.lookups += 1
        return super().__getitem__(key)

    def get(self, key, default=None):
        CountingRanks.lookups += 1
        return super().get(key, default)

    def __contains__(self, key):
        CountingRanks.lookups += 1
        return super().__contains__(key)


def counting_tokenizer() -> tk.Tokenizer:
    tokenizer = tk.Tokenizer()
    tokenizer.ranks = CountingRanks(tokenizer.ranks)
    CountingRanks.lookups = 0
    return tokenizer


# Rank look-ups per letter allowed: the heap BPE looks up each adjacent pair once, then at most two new pairs
# per merge (2.7 per letter measured on random words). OpenAI's loop looks up every pair of the word at every
# merge round, so its count grows with the word's length (thousands per letter at 32,000 letters; the
# seconds that costs are what the issue measured: 12-30 s).
LOOKUPS_PER_LETTER = 4


def test_a_32000_letter_word_is_refused_after_linear_work():
    word = random_word(random.Random(1), "abcdefghijklmnopqrstuvwxyz", 32_000)
    tokenizer = counting_tokenizer()
    with pytest.raises(ValueError, match="text 0 has \\d+ tokens; the model's context is 77"):
        tokenizer.tokenize(word)
    assert CountingRanks.lookups <= LOOKUPS_PER_LETTER * len(word)
    row = tokenizer.tokenize(word, truncate=True)[0]
    assert row[-1] == tk.EOT and (row != 0).all()
    assert CountingRanks.lookups <= 2 * LOOKUPS_PER_LETTER * len(word)


def test_100kb_of_long_words_encodes_after_linear_work_and_is_not_cached():
    rng = random.Random(2)
    text = " ".join(random_word(rng, "abcdefghijklmnopqrstuvwxyz", 1000) for _ in range(100))
    tokenizer = counting_tokenizer()
    ids = tokenizer.encode(text)
    assert CountingRanks.lookups <= LOOKUPS_PER_LETTER * len(text)
    assert len(ids) > 30_000 and tokenizer.word_ids.cache_info().currsize == 0
