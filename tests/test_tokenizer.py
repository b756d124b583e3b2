"""mini_clip's tokenizer against OpenAI's original (`simple_tokenizer.py` + `clip.tokenize`).

Every expected value comes from OpenAI's code, loaded by file path (see tests/reference/openai.py, which
restates `clip.tokenize` from clip/clip.py as `openai_tokenize`: its package cannot be imported here).
"""
import functools
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mini_clip import tokenizer as tk

from reference.openai import openai_tokenize


@pytest.fixture(scope="module")
def ref(openai_tokenizer):
    """OpenAI's SimpleTokenizer."""
    return openai_tokenizer.SimpleTokenizer()


@pytest.fixture(scope="module")
def ours():
    return tk.default_tokenizer()


HARD = [
    "", " ", "   \t\n  ", "\u3000\u00a0\u2003", "a photo of a cat", "A Photo Of A CAT.",
    # HTML entities: OpenAI unescapes with ftfy and twice more with html.unescape
    "fish &amp; chips", "fish &amp;amp; chips", "&amp;amp;amp;amp;", "&lt;b&gt;bold&lt;/b&gt;",
    "<b>&amp;</b>",
    "&quot;quoted&quot; &#39;x&#39; &#x1F600; &nbsp;", "&notanentity; & ;&",
    # contractions, upper case and curly quotes
    "DON'T", "IT'S", "we'RE i'M they'LL she'D you'VE", "don’t it’s", "''s 't", "rock 'n' roll",
    # the special markers typed inside the text
    "<|startoftext|>", "<|endoftext|>", "a <|endoftext|> b", "<|STARTOFTEXT|>x<|endoftext|>y",
    "<|startoftext|<|endoftext|>>", "<|endof text|>",
    # mojibake that ftfy repairs, accents, combining marks
    "cafÃ©", "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.", "Ãºnico", "naïve café résumé Zürich",
    "e\u0301 a\u0300 n\u0303", "Z̷̧͎a̸l̴g̵o̶", "İstanbul ß ẞ ǅ ﬃ",
    # CJK, RTL, Indic, Thai
    "日本語のテキスト", "中文字符和标点。", "한국어 문장입니다", "مرحبا بالعالم", "שלום עולם",
    "नमस्ते दुनिया", "สวัสดีครับ",
    "English עברית mixed العربية 123",
    # emoji: skin tones, ZWJ sequences, flags, keycaps, variation selectors
    "😀", "👍🏽👍🏿", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵🇫🇷🇺🇸", "1️⃣ #️⃣", "❤️ vs ❤", "a🐱b🐶c",
    # full-width forms, ligatures, zero-width and non-breaking spaces, control characters
    "Ｆｕｌｌ　ｗｉｄｔｈ　１２３！", "ﬁne ﬂow ﬀ", "zero\u200bwidth\u200cjoin\u200dx\ufeffy",
    "no\u00a0break\u202fhere",
    "ctrl\x00\x01\x07\x1b[31mred\x1b[0m\x7f\x85\x9f", "line\r\nbreak\u2028sep\u2029para\x0b\x0c",
    "\x1c\x1d\x1e\x1fsep", "soft\u00adhyphen", "\ufffd replacement", "\ud83d\ude00 pair",
    "lone\ud800surrogate",
    # very long words, numbers, punctuation runs
    "supercalifragilisticexpialidocious" * 6, "x" * 300, "1234567890" * 5, "3.14159 -2e10 1,000,000 ½ ² ٣ ๓",
    "!!!???...,,,;;;:::---___***", "...!?", "(((a)))[[b]]{{c}}", "$100 @user #tag 50% a&b",
    "http://example.com/a?b=c&d=e#f", "C:\\path\\to\\file.txt", "a" + " " * 50 + "b",
    "a photo of " * 30,
]


def random_texts(n=300, seed=0):
    """Seeded random strings mixing Unicode blocks, spaces and tricky fragments."""
    rng = random.Random(seed)
    blocks = [(0x20, 0x7E), (0x00, 0x1F), (0x80, 0xFF), (0x100, 0x24F), (0x300, 0x36F), (0x370, 0x3FF),
              (0x400, 0x4FF), (0x590, 0x5FF), (0x600, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F),
              (0x2000, 0x206F), (0x2100, 0x214F), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3),
              (0xE000, 0xE0FF), (0xFB00, 0xFB4F), (0xFE00, 0xFE0F), (0xFF00, 0xFFEF), (0x1D400, 0x1D7FF),
              (0x1F300, 0x1FAFF)]
    fragments = [" ", "  ", "&amp;", "'s", "'LL", "<|endoftext|>", "\u200d", "\n", "Ã©"]
    texts = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(0, 12)):
            if rng.random() < 0.2:
                parts.append(rng.choice(fragments))
            else:
                lo, hi = rng.choice(blocks)
                parts.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 6))))
        texts.append("".join(parts))
    return texts


CORPUS = HARD + random_texts()


def test_constants_match_openai(ref, ours):
    assert len(ref.encoder) == tk.VOCAB_SIZE == 49408
    assert ref.encoder["<|startoftext|>"] == tk.SOT and ref.encoder["<|endoftext|>"] == tk.EOT
    assert list(tk.bytes_to_unicode().items()) == list(ref.byte_encoder.items())  # order is the ids' order
    assert ours.vocab == [ref.decoder[i] for i in range(len(ref.decoder))]
    assert ours.ranks == ref.bpe_ranks


@pytest.mark.parametrize("context_length, truncate", [(77, False), (77, True), (8, True), (2, True)])
def test_tokenize_matches_openai(ref, context_length, truncate):
    for i, text in enumerate(CORPUS):
        try:
            expected = openai_tokenize(ref, [text], context_length, truncate)
        except RuntimeError:  # OpenAI: too long; ours must say so too
            too_long = f"text 0 has .* tokens; the model's context is {context_length} "
            with pytest.raises(ValueError, match=too_long):
                tk.tokenize(text, context_length, truncate)
            continue
        got = tk.tokenize(text, context_length, truncate)
        assert got.dtype == torch.long and got.shape == (1, context_length)
        assert torch.equal(got, expected.long()), f"CORPUS[{i}] = {text!r}"


def test_tokenize_batch_matches_openai(ref):
    texts = [t for t in CORPUS if len(ref.encode(t)) <= 75]
    assert len(texts) > 200
    assert torch.equal(tk.tokenize(texts), openai_tokenize(ref, texts).long())
    assert torch.equal(tk.tokenize(CORPUS, truncate=True), openai_tokenize(ref, CORPUS, truncate=True).long())


def test_too_long_error_names_index_count_context_and_fix(ref):
    long = "a photo of a very long caption " * 3
    count = len(ref.encode(long)) + 2  # with start and end of text
    with pytest.raises(ValueError) as err:
        tk.tokenize(["a cat", "a dog", long], context_length=16)
    assert str(err.value) == (f"text 2 has {count} tokens; the model's context is 16 "
                              "(use truncate=True, or --truncate on the command line)")
    with pytest.raises(ValueError, match="context_length"):
        tk.tokenize("a", context_length=1)


def test_encode_decode_match_openai(ref, ours):
    for text in CORPUS:
        ids = ref.encode(text)
        assert ours.encode(text) == ids, repr(text)
        assert ours.decode(ids) == ref.decode(ids), repr(text)
        assert ours.decode(torch.tensor(ids)) == ref.decode(ids)


def test_decode_of_a_row_skips_start_end_and_padding(ref, ours):
    row = tk.tokenize("A photo of a cat 😀 日本")[0]
    assert ours.decode(row, skip_special=True) == ref.decode(ref.encode("A photo of a cat 😀 日本"))
    assert ours.decode(row).startswith("<|startoftext|>")  # OpenAI's decode, padding spelled as '!'
    assert ours.decode(row).endswith("!" * 10)
    with pytest.raises(ValueError, match="49408"):
        ours.decode([49408])


def test_pieces_match_openai_bpe(ref, openai_tokenizer, ours):
    for text in CORPUS:
        cleaned = openai_tokenizer.whitespace_clean(openai_tokenizer.basic_clean(text)).lower()
        words = openai_tokenizer.re.findall(ref.pat, cleaned)
        spelled = ["".join(ref.byte_encoder[b] for b in w.encode("utf-8")) for w in words]
        assert ours.pieces(text) == [p for w in spelled for p in ref.bpe(w).split(" ")], repr(text)


def test_clean_matches_openai(openai_tokenizer):
    for text in CORPUS:
        assert tk.clean(text) == openai_tokenizer.whitespace_clean(openai_tokenizer.basic_clean(text)).lower()


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(max_codepoint=0x7F)))
def test_ascii_fast_path_matches_openai_clean(openai_tokenizer, text):
    assert tk.clean(text) == openai_tokenizer.whitespace_clean(openai_tokenizer.basic_clean(text)).lower()


def test_token_labels(ref):
    assert tk.token_labels(tk.tokenize("A photo of a CAT!")[0]) == ["a", "photo", "of", "a", "cat", "!"]
    assert tk.token_labels(torch.tensor([tk.SOT, tk.EOT, 0, 0])) == []
    for text in CORPUS:
        row = tk.tokenize(text, truncate=True)[0]
        eot = int(row.argmax())  # the model's end-of-text position: the first 49407
        pieces = [ref.decoder[i].replace("</w>", "") for i in row[1:eot].tolist()]
        expected = [bytes(ref.byte_decoder[c] for c in p).decode(errors="replace") for p in pieces]
        assert tk.token_labels(row) == expected, repr(text)
    # 語: 3 bytes, 2 pieces
    assert tk.token_labels(tk.tokenize("日本語")[0]) == ["日", "本", "\ufffd", "\ufffd"]
    with pytest.raises(ValueError, match="starting with 49406"):
        tk.token_labels([1, 2, 3])


def test_word_cache_is_bounded_and_exact(ref):
    small = tk.Tokenizer(cache_size=8)
    for text in CORPUS[:80]:
        assert small.encode(text) == ref.encode(text)
    assert small.word_ids.cache_info().currsize <= 8
    assert tk.default_tokenizer() is tk.default_tokenizer()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(st.characters(blacklist_categories=()), max_size=60), st.sampled_from([8, 77]), st.booleans())
def test_tokenize_arbitrary_text(openai_tokenizer, text, context_length, truncate):
    ref = _shared_ref(openai_tokenizer)
    try:
        row = tk.tokenize(text, context_length, truncate)[0]
    except ValueError as err:
        assert not truncate and "truncate=True" in str(err)
        assert len(ref.encode(text)) + 2 > context_length
        return
    assert row.shape == (context_length,) and row.dtype == torch.long
    assert ((0 <= row) & (row < tk.VOCAB_SIZE)).all()
    assert row[0] == tk.SOT and (row == tk.EOT).sum() == 1 + ref.encode(text).count(tk.EOT)
    assert torch.equal(row, openai_tokenize(ref, text, context_length, truncate)[0].long())


@functools.lru_cache(maxsize=None)
def _shared_ref(module):
    """One SimpleTokenizer for all hypothesis examples (hypothesis re-runs the test body, not fixtures)."""
    return module.SimpleTokenizer()
