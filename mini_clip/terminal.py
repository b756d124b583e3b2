"""What python -m mini_clip.explain prints: the settings line, a table per image, progress and errors.

Results go to stdout; progress, warnings and errors to stderr, each line starting with the tool's name.
Every text and file name passes through `printable` first: a terminal acts on none of their characters.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional, TextIO

from .heatmap import WORD_SCALE, word_scale
from .model import CLIP
from .outputs import RunSettings, printable
from .relevance import Relevance, settings

PROG = "mini_clip.explain"  # how the tool's own lines on stderr start


def error(message: str) -> None:
    print(f"{PROG}: error: {printable(message)}", file=sys.stderr, flush=True)


def warning(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def describe(model: CLIP, run: RunSettings, flags: tuple[str, ...], given: tuple) -> str:
    """One line: the method and the blocks explained, and where the settings came from.

    Args:
        run: the settings resolved; flags: the flags of method, start layer and start layer text;
        given: their values as given (None: not given).
    """
    blocks = (model.config.vision_layers, model.config.transformer_layers)
    flags = flags[: 2 if run.method == "legrad" else 3]  # legrad has no text blocks to start from
    given = [flag for flag, value in zip(flags, given) if value is not None]
    advised = model.recommended and settings(model)[0] == run.method  # the weights' method, theirs or not
    rest = "as the weights recommend" if advised else "the method's defaults"
    source = "; ".join([f"given: {', '.join(given)}"] * bool(given)
                       + [f"the rest {rest}"] * (len(given) < len(flags)))
    towers = f"image blocks {run.start_layer}..{blocks[0] - 1}"
    if run.method != "legrad":
        towers += f", text blocks {run.start_layer_text}..{blocks[1] - 1}"
    return f"settings: {run.method}{' (signed)' if run.signed else ''}, {towers} ({source})"


def bar(value: float, width: int = 20) -> str:
    """|value| (in [-1, 1]) as a bar of `width`: '#' for evidence for the text, '-' for evidence against."""
    full = round(min(1.0, abs(value)) * width)
    return ("#" if value >= 0 else "-") * full + "." * (width - full)


def report(name: str, rel: Relevance, texts: list[str]) -> str:
    """The terminal table for one image: texts best first, then each text's words with bars."""
    order = sorted(range(len(texts)), key=lambda j: -float(rel.probs[0, j]))
    if len(texts) == 1:  # the probability says nothing: the logit first
        lines = [printable(name), f"  {'logit':>8}  {'prob':>7}  text",
                 f"  {float(rel.logits[0, 0]):8.3f}  {float(rel.probs[0, 0]):7.2%}  {printable(texts[0])}",
                 "  (one text: a softmax over the texts given is always 100 %; compare logits, or add texts)"]
    else:
        lines = [printable(name), f"  {'prob':>7}  {'logit':>8}  text"]
        lines += [f"  {float(rel.probs[0, j]):7.2%}  {float(rel.logits[0, j]):8.3f}  {printable(texts[j])}"
                  for j in order]
    if rel.text is None:
        lines.append(f"  words: none ({rel.method} explains the image only)")
        return "\n".join(lines)
    lines.append(f"  words: {WORD_SCALE} ('-' bars: evidence against the text)")
    for j in order:
        lines.append(f"  words for '{printable(texts[j])}':")
        lines += [f"    {printable(label):>14} {bar(v)} {v:5.2f}"
                  for label, v in zip(rel.labels[j], word_scale(rel.text[j][0].numpy()))]
    return "\n".join(lines)


class Progress:
    """How far a run is. On a terminal: '[n/N] images/s, time left  image' on one line of stderr, rewritten
    in place and erased before anything else is printed, so it never runs into a result or an error line. In
    a log (no terminal): a line every `every` seconds. Off: nothing.

    The rate counts the images explained in this run, not those resumed (they take no time)."""

    ERASE = "\r\033[K"  # carriage return, then erase to the end of the line
    EVERY = 30.0  # seconds between lines in a log

    def __init__(self, total: int, mode: Optional[str], stream: TextIO = sys.stderr, every: float = EVERY,
                 clock: Callable[[], float] = time.monotonic):
        assert mode in (None, "terminal", "log")
        self.total = total
        self.mode = mode
        self.stream = stream
        self.every = every
        self.clock = clock
        self.shown = False  # a terminal line is on the screen, to be erased
        self.start = clock()
        self.last = clock()  # of the last line in a log
        self.worked = 0  # images explained, not resumed

    def done(self, n: int, path: Path, worked: bool) -> None:
        """Image `path`, the n-th of the total, is finished (worked: explained now, not resumed)."""
        self.worked += worked
        if self.mode == "terminal":
            self._line(f"[{n}/{self.total}] {self.rate(n)}", path)
        elif self.mode == "log" and self.clock() - self.last >= self.every and n < self.total:
            self.last = self.clock()
            print(f"{PROG}: progress: {n}/{self.total} images, {self.rate(n)}", file=self.stream, flush=True)

    def rate(self, n: int) -> str:
        seconds = self.clock() - self.start
        if not self.worked or seconds <= 0:
            return "-- images/s"
        per_second = self.worked / seconds
        return f"{per_second:.2f} images/s, {duration((self.total - n) / per_second)} left"

    def _line(self, text: str, path: Path) -> None:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns or 80
        except (OSError, ValueError, AttributeError):
            columns = 80
        name = printable(str(path))
        room = columns - 1 - len(text) - 2  # a wrapped line could not be erased: cut the path's start
        line = f"{text}  {name if len(name) <= room else '…' + name[len(name) - room + 1:]}"[: columns - 1]
        print(self.ERASE + line, end="", file=self.stream, flush=True)
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            print(self.ERASE, end="", file=self.stream, flush=True)
            self.shown = False


def duration(seconds: float) -> str:
    """'42 s', '3 min 5 s', '2 h 7 min': what a person reads at a glance."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
