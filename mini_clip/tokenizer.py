"""CLIP's tokenizer: byte-level BPE, id for id the same as OpenAI's `simple_tokenizer.py` + `clip.tokenize`.

How a caption becomes token ids:
1. Clean: ftfy repairs mojibake, HTML entities are unescaped (twice, as OpenAI does), runs of whitespace
   become one space, and everything is lower-cased (the paper: "lower-cased byte pair encoding").
2. Pre-tokenize: `PATTERN` splits the text into words: letter runs, single digits, punctuation runs,
   contractions ('s, 't, ...) and the two special markers.
3. Spell each word in bytes: its UTF-8 bytes are written with a 256-character alphabet
   (`bytes_to_unicode`), so text in any script is spelled with known symbols: there is no unknown token.
4. BPE: start from single symbols, the last one marked `</w>` (end of word), and merge the adjacent pair
   that was learned earliest (lowest rank in the merges file), again and again, until no learned pair is
   left. Each final piece is a vocabulary entry, and its index is the token id.
5. `tokenize` frames each text with start and end of text and pads it with zeros to the model's context.
"""
from __future__ import annotations

import gzip
import heapq
import html
import numbers
import sys
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence, Union

import ftfy
import numpy as np
import regex
import torch

MERGES_PATH = Path(__file__).parent / "bpe_simple_vocab_16e6.txt.gz"  # OpenAI's merges file (MIT)
# The paper's "49,152 vocab size" counts 256 bytes + the merges + 2 special tokens; OpenAI's code keeps the
# first NUM_MERGES merges and also adds the 256 bytes with `</w>`, so the model has 49408 token ids.
NUM_MERGES = 49152 - 256 - 2  # 48894
VOCAB_SIZE = 256 + 256 + NUM_MERGES + 2  # 49408: bytes, bytes ending a word, merges, specials
SOT = 49406  # <|startoftext|>, second to last id
EOT = 49407  # <|endoftext|>, last id; the text tower reads its feature at this position
SPECIALS = ("<|startoftext|>", "<|endoftext|>")
CONTEXT_LENGTH = 77  # every released CLIP: 75 text tokens + start + end
MAX_CACHED_WORD = 100  # characters: longer words are merged each time, not kept in the word cache

# OpenAI's pre-tokenizer, verbatim: the specials first so that typed markers stay whole, contractions,
# letter runs, one digit at a time (numbers are spelled digit by digit), runs of anything else but
# whitespace. No word holds a space. IGNORECASE as OpenAI compiles it (the text is lower-cased by then).
PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE)
WHITESPACE = regex.compile(r"\s+")  # the `regex` package's \s, as in OpenAI's whitespace_clean

Ids = Union[Iterable[int], torch.Tensor]


class TextTooLong(ValueError):
    """A text has more tokens than the context holds, and truncation was not asked for: the text's position
    in the list given (`index`, from 0), its `tokens` (start and end included) and the model's `context`."""

    def __init__(self, index: int, tokens: int, context: int):
        self.index = index
        self.tokens = tokens
        self.context = context
        super().__init__(self.message(f"text {index}"))

    def __reduce__(self):  # pickled (multiprocessing) as its fields: __init__ does not take the message
        return TextTooLong, (self.index, self.tokens, self.context)

    def message(self, name: str) -> str:
        """The error, the text named as the caller names it (the CLI counts from 1 and quotes the text)."""
        return (f"{name} has {self.tokens} tokens; the model's context is {self.context} (use truncate=True, "
                "or --truncate on the command line)")


def bytes_to_unicode() -> dict[int, str]:
    """Give each of the 256 byte values a printable character, so that BPE can work on `str`.

    Printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the other 68 (controls,
    space, no-break space, soft hyphen) move to chr(256), chr(257), ... The dict's order is the
    vocabulary's: ids 0..255 are these characters in this order (OpenAI's `bytes_to_unicode`).

    Returns:
        byte value -> the character that spells it.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def clean(text: str) -> str:
    """OpenAI's `basic_clean`, then `whitespace_clean`, then `.lower()`.

    Args:
        text: raw caption.
    Returns:
        repaired, unescaped, single-spaced, stripped, lower-cased text.
    """
    if text.isascii() and text.isprintable() and "&" not in text:
        # Fast path, same result: ftfy only changes non-ASCII, control characters and HTML entities,
        # html.unescape only acts on '&', and the one whitespace character left is the space.
        return " ".join(text.split()).lower()
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return WHITESPACE.sub(" ", text).strip().lower()


class Tokenizer:
    """Byte-level BPE with OpenAI's merges: text to token ids and back.

    Args:
        merges_path: gzipped merges file: a version line, then one learned pair per line, earliest first.
        cache_size: how many distinct words keep their ids in memory.
    """

    def __init__(self, merges_path: Union[str, Path] = MERGES_PATH, cache_size: int = 1 << 16):
        lines = gzip.open(merges_path).read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]  # line 0 names the version
        self.merges = merges  # rank -> pair
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}  # lower rank: learned, so merged, first
        byte_to_char = bytes_to_unicode()
        chars = list(byte_to_char.values())
        # The vocabulary in id order: bytes, bytes ending a word, each merge's pair joined, the specials.
        self.vocab = chars + [c + "</w>" for c in chars] + ["".join(pair) for pair in merges] + [*SPECIALS]
        self.ids = {piece: i for i, piece in enumerate(self.vocab)}
        assert len(self.ids) == VOCAB_SIZE and self.ids[SPECIALS[0]] == SOT and self.ids[SPECIALS[1]] == EOT
        # str.translate tables between bytes, held as latin-1 characters (chr(b) for byte b), and spellings.
        self.spell, self.unspell = byte_to_char, {ord(c): chr(b) for b, c in byte_to_char.items()}
        # Bounded cache, word -> ids: captions reuse words, so most are looked up here, not merged again
        # (OpenAI keeps an unbounded dict of bpe() results for the same reason).
        self.word_ids = lru_cache(maxsize=cache_size)(self._word_ids)

    def bpe(self, word: str) -> list[str]:
        """Split one word, spelled in byte characters, into vocabulary pieces (OpenAI's `bpe`).

        OpenAI's loop finds the lowest-rank adjacent pair, merges all its occurrences left to right (without
        overlaps), and scans the whole word again: quadratic, 12 s for one 32,000-letter word. Here the same
        merges are made in the same order in O(n log n): the pieces form a linked list, and a heap holds every
        adjacent pair that is in the merges, keyed (rank, position of its left piece). One round takes ALL
        the entries of the lowest rank before merging any, as OpenAI's loop does. With CLIP's file this
        changes nothing (a merge always ranks after those that make its pieces, so it cannot form a pair of
        lower rank), but with any other merges file it does: for 'a b a b' with (ab, a) ranked before
        (a, b), OpenAI gives 'ab ab', not 'aba b'.

        Args:
            word: a non-empty word, e.g. 'photo' or 'cafÃ©' ('é' is the two bytes 'Ã', '©').
        Returns:
            its pieces, the last one ending in '</w>', e.g. ['photo</w>'].
        """
        if word in SPECIALS:  # a typed marker is its own token (OpenAI seeds its bpe cache with these)
            return [word]
        # Pieces, each at the position of its first symbol (None: merged into the piece on its left).
        parts: list = [*word[:-1], word[-1] + "</w>"]
        after = [*range(1, len(parts)), None]  # linked list: the position of the next piece
        before = [None, *range(len(parts) - 1)]
        heap = [(self.ranks[pair], i) for i, pair in enumerate(zip(parts, parts[1:])) if pair in self.ranks]
        heapq.heapify(heap)
        while heap:
            rank = heap[0][0]
            round_ = [heapq.heappop(heap)[1]]
            while heap and heap[0][0] == rank:
                round_.append(heapq.heappop(heap)[1])  # positions in increasing order: left to right
            first, second = self.merges[rank]
            for i in round_:
                j = after[i]
                # Pieces only grow, so an entry whose pieces changed since it was pushed (an overlap merged
                # just before, or an older pair) can never match again: skip it.
                if parts[i] != first or j is None or parts[j] != second:
                    continue
                parts[i], parts[j] = first + second, None
                after[i] = after[j]
                if after[i] is not None:
                    before[after[i]] = i
                    self._push(heap, parts, i, after[i])
                if before[i] is not None:
                    self._push(heap, parts, before[i], i)
        return [piece for piece in parts if piece is not None]

    def _push(self, heap: list, parts: list, i: int, j: int) -> None:
        """Queue the adjacent pieces at positions i, j if their pair is learned."""
        rank = self.ranks.get((parts[i], parts[j]))
        if rank is not None:
            heapq.heappush(heap, (rank, i))

    def to_bytes(self, piece: str) -> bytes:
        """The bytes a piece spells, e.g. 'Ã©' -> 'é'.encode(); '</w>' is ASCII and spells itself."""
        return piece.translate(self.unspell).encode("latin-1")

    def _word_ids(self, word: str) -> tuple[int, ...]:
        spelled = word.encode("utf-8").decode("latin-1").translate(self.spell)  # one character per byte
        return tuple(self.ids[piece] for piece in self.bpe(spelled))

    def encode(self, text: str) -> list[int]:
        """Token ids of a text, without start and end of text (OpenAI's `SimpleTokenizer.encode`).

        Args:
            text: any Unicode text.
        Returns:
            token ids in [0, 49408).
        """
        return self._encode(text, sys.maxsize)

    def _encode(self, text: str, limit: int) -> list[int]:
        """`encode`, stopped after the word that brings the count to `limit` ids or more: BPE works within a
        word, so the first ids never depend on the words after them."""
        ids: list[int] = []
        for word in PATTERN.findall(clean(text)):
            # A long word is rarely seen twice, and the cache would keep it alive whatever its size.
            ids.extend(self.word_ids(word) if len(word) <= MAX_CACHED_WORD else self._word_ids(word))
            if len(ids) >= limit:
                break
        return ids

    def pieces(self, text: str) -> list[str]:
        """BPE pieces of a text as vocabulary strings, e.g. ['a</w>', 'photo</w>']: one per id of `encode`."""
        return [self.vocab[i] for i in self.encode(text)]

    def decode(self, ids: Ids, skip_special: bool = False) -> str:
        """Text of token ids; with `skip_special=False`, exactly OpenAI's `SimpleTokenizer.decode`.

        Args:
            ids: token ids (a list or a 1-D tensor).
            skip_special: read `ids` as a row of `tokenize`'s output and decode only the ids between its
                start and its first end of text (the zero padding would otherwise spell '!!!').
        Returns:
            the text, each word end written as a space; bytes that are not valid UTF-8 become '�'.
        """
        ids = self.text_ids(ids) if skip_special else _as_list(ids)
        if ids and not (0 <= min(ids) and max(ids) < VOCAB_SIZE):
            raise ValueError(f"token ids must lie in [0, {VOCAB_SIZE}); got {min(ids)}..{max(ids)}")
        text = self.to_bytes("".join(self.vocab[i] for i in ids)).decode("utf-8", errors="replace")
        return text.replace("</w>", " ")  # after decoding, as OpenAI does (specials spell their names)

    def text_ids(self, row: Ids) -> list[int]:
        """The ids of the text in a row of `tokenize`'s output.

        Args:
            row: one row of `tokenize(...)`, starting with SOT.
        Returns:
            the ids at positions 1 .. eot - 1, eot being the first end of text: where the model reads the
            text feature (`argmax` in OpenAI's encode_text).
        """
        row = _as_list(row)
        if not row or row[0] != SOT:
            raise ValueError(f"expected a row of tokenize()'s output, starting with {SOT}; got {row[:3]}...")
        return row[1:row.index(EOT)] if EOT in row else row[1:]

    def token_labels(self, row: Ids) -> list[str]:
        """Readable labels for the tokens of a row of `tokenize`'s output (positions 1 .. eot - 1).

        Args:
            row: one row of `tokenize(...)`, starting with SOT.
        Returns:
            one label per token: its text without '</w>'; bytes of a character split between pieces
            (emoji, CJK) show as '�'.
        """
        pieces = (self.vocab[i].removesuffix("</w>") for i in self.text_ids(row))
        return [self.to_bytes(piece).decode("utf-8", errors="replace") for piece in pieces]

    def tokenize(self, texts: Union[str, Sequence[str]], context_length: int = CONTEXT_LENGTH,
                 truncate: bool = False) -> torch.LongTensor:
        """Token ids of texts, framed by start and end of text, zero padded (OpenAI's `clip.tokenize`).

        Args:
            texts: one text or a list of texts (an empty list gives an empty (0, context_length) tensor, as
                OpenAI's does).
            context_length: tokens per row, start and end included, an int >= 2.
            truncate: instead of raising, cut a text that is too long to `context_length` tokens and set
                the last one to end of text (as OpenAI does).
        Returns:
            LongTensor [len(texts), context_length].
        Raises:
            TextTooLong: a text is too long and `truncate` is False (a ValueError).
            ValueError: context_length < 2.
            TypeError: a text that is not a str, or a context_length that is not an int.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                fix = "decode it first: text.decode('utf-8')" if isinstance(text, bytes) else "pass strings"
                raise TypeError(f"text {i} is {type(text).__name__}, not str: {fix}")
        if isinstance(context_length, bool) or not isinstance(context_length, numbers.Integral):
            raise TypeError(f"context_length must be an int (the model's context); got {context_length!r}")
        if context_length < 2:
            raise ValueError(f"context_length must hold start and end of text (>= 2); got {context_length}")
        result = np.zeros((len(texts), context_length), dtype=np.int64)  # one tensor at the end, not per text
        for i, text in enumerate(texts):
            # Truncated, only the first context_length - 1 ids are kept: the words after them are not merged.
            ids = [SOT, *self._encode(text, context_length - 1 if truncate else sys.maxsize), EOT]
            if len(ids) > context_length:
                if not truncate:  # OpenAI raises RuntimeError("Input ... is too long ...")
                    raise TextTooLong(i, len(ids), context_length)
                ids = ids[:context_length - 1] + [EOT]
            result[i, :len(ids)] = ids
        return torch.from_numpy(result)


def _as_list(ids: Ids) -> list[int]:
    return ids.tolist() if isinstance(ids, (torch.Tensor, np.ndarray)) else [int(i) for i in ids]


@lru_cache(maxsize=None)
def default_tokenizer() -> Tokenizer:
    """The tokenizer with OpenAI's merges, loaded on first use and then shared."""
    return Tokenizer()


def tokenize(texts: Union[str, Sequence[str]], context_length: int = CONTEXT_LENGTH,
             truncate: bool = False) -> torch.LongTensor:
    """`Tokenizer.tokenize` with the default tokenizer: LongTensor [len(texts), context_length]."""
    return default_tokenizer().tokenize(texts, context_length, truncate)


def token_labels(row: Ids) -> list[str]:
    """`Tokenizer.token_labels` with the default tokenizer: one label per token between start and end."""
    return default_tokenizer().token_labels(row)
