"""Explaining many photos: batches through the model, with decoding and drawing around it.

`explain_folder` yields one ImageResult per image, in input order, as soon as the image's outputs are written.
Three stages overlap: worker threads decode each photo, preprocess it for the model and keep a drawing copy
(at most `max_size` pixels on its long side); the calling thread runs `relevance` on a batch of images, with
the texts prepared once for the whole run (`prepare_texts`); worker threads draw and write each image's
overlays, sheet and record. PIL's decoders, resizes and encoders and torch's kernels release the GIL, so the
threads overlap for real. At most 2 batches are decoded ahead and 2 batches wait to be drawn: memory is
bounded by the batch size, not by the folder.
"""
from __future__ import annotations

import os
import stat
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import torch
from PIL import Image

from .heatmap import shrink
from .image import CropGeometry, ImageError, Preprocessing, load_image, preprocess
from .model import CLIP
from .outputs import (
    FORMAT,
    FORMATS,
    OutputError,
    RunSettings,
    finished,
    folder_names,
    image_folder,
    output_paths,
    stamp,
    weights_stamp,
    write_outputs,
)
from .relevance import PreparedTexts, Relevance, check_signed, prepare_texts, relevance, settings

# Images explained together. Measured (scripts/bench.py pipeline, ViT-B/32 shapes, 8 texts, 2 CPU cores):
# 4 gives most of the throughput of 16 at a quarter of its memory (the gradients of B x N pairs).
BATCH_SIZE = 4
# Long side of the overlays, in pixels (0: the photo's own size). The maps have at most 24 x 24 cells
# (ViT-L/14@336): at 1024 a cell still spans 40 pixels or more, so no detail of an explanation is lost, and
# the photo stays recognisable on any screen. Measured (scripts/bench.py scale): a 12 MP photo drawn at full
# size costs several times the model's own work per image; at 1024 x 768 (1/16 of the pixels) 8 overlays,
# the contact sheet and their files take about 0.1 s on one thread, less than ViT-B/32's explanation of the
# image (0.15 s). Use --max-size 0 for prints.
MAX_SIZE = 1024
WORKERS = 2  # decoding and drawing threads: enough to hide both behind the model on a few cores


@dataclass
class ImageResult:
    """One image's outcome.

    Attributes:
        path: the image as given.
        record: its JSON record (as in results.json), None if it failed.
        relevance: its Relevance (one image, every text); None if it failed or was resumed.
        error: one line saying what went wrong with this image, None if it was explained (or resumed).
    """
    path: Path
    record: Optional[dict] = None
    relevance: Optional[Relevance] = None
    error: Optional[str] = None

    @property
    def resumed(self) -> bool:
        """Finished by an earlier run (resume=True) and not redone."""
        return self.record is not None and self.relevance is None


@dataclass
class _Loaded:
    """An image ready for the model and for drawing."""
    path: Path
    folder: Path
    stamp: dict
    x: torch.Tensor  # (3, R, R), the model's input: the weights' preprocessing of the full-size photo
    geometry: CropGeometry
    picture: Image.Image  # the drawing copy, at most max_size on its long side


@dataclass(frozen=True)
class _Job:
    """What every image of a run shares."""
    out: Path
    texts: tuple[str, ...]
    weights: dict
    settings: RunSettings
    resolution: int
    preprocessing: Preprocessing  # the weights' own: the model's input and the maps' geometry
    resume: bool


def check_sizes(batch_size: int, workers: int, max_size: int,
                names: tuple[str, str, str] = ("batch_size", "workers", "max_size")) -> None:
    """The size options of `explain_folder`, checked before any work.

    Args:
        names: how the caller spells the three in error messages (the CLI: its flags).
    Raises:
        ValueError: one that is not an int, or is below its least value (batch_size 1, the others 0).
    """
    for name, value, least in zip(names, (batch_size, workers, max_size), (1, 0, 0)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {value!r}")
        if value < least:
            raise ValueError(f"{name} must be at least {least}, got {value!r}")


def explain_folder(model: CLIP, images: Sequence[Union[str, os.PathLike]], texts: Sequence[str],
                   out: Union[str, os.PathLike], *, method: Optional[str] = None,
                   start_layer: Optional[int] = None, start_layer_text: Optional[int] = None,
                   signed: bool = False, truncate: bool = False, batch_size: int = BATCH_SIZE,
                   workers: int = WORKERS, max_size: int = MAX_SIZE, format: str = FORMAT,
                   resume: bool = False, weights: Optional[str] = None,
                   shard: tuple[int, int] = (0, 1),
                   prepared: Optional[PreparedTexts] = None) -> Iterator[ImageResult]:
    """Explain every image against every text, writing per image OUT/NAME/ (overlays, sheet.png,
    result.json) as `python -m mini_clip.explain` does; yield the results in input order.

    Args:
        model: a loaded CLIP; images: image files; texts: the texts (at least one); out: the output directory.
        method, start_layer, start_layer_text, signed, truncate: as `relevance`.
        batch_size: images explained together (memory grows with batch_size x texts).
        workers: decoding and drawing threads; 0 does everything in the calling thread, one step at a time.
        max_size: the overlays' long side at most (0: the photo's own size); format: "jpeg", "png" or "webp".
        resume: skip an image whose folder holds a record of the same image file, weights, texts and
            settings, with every output present (see outputs.finished).
        weights: what the model was loaded from (as given to mini_clip.load; None: the embedded model):
            recorded in each image's stamp for `resume`.
        shard: (k, n): explain only the images at positions k, k + n, ... (one of n processes); the
            folder names still come from the whole list, so every process names every image alike.
        prepared: `texts` as prepare_texts(model, texts, method, start_layer_text, truncate) made them
            (the CLI prepares them first, so that a text error comes before any image is read); None:
            prepared here.
    Yields:
        One ImageResult per image of the shard, in input order. An image that cannot be read or written
        gives a result with its `error`; the others go on.
    Raises:
        ValueError: bad settings, texts, batch_size, workers, max_size, format, shard or prepared texts
            (before any work).
    """
    method, s_img, s_txt = settings(model, method, start_layer, start_layer_text)
    check_signed(method, signed)
    if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty list of strings")
    check_sizes(batch_size, workers, max_size)
    if format not in FORMATS:
        raise ValueError(f"format {format!r} is not one of {', '.join(FORMATS)}")
    if len(shard) != 2 or not 0 <= shard[0] < shard[1]:
        raise ValueError(f"shard must be (k, n) with 0 <= k < n, got {shard!r}")
    if prepared is None:
        prepared = prepare_texts(model, list(texts), method, s_txt, truncate)  # once for the whole run
    else:
        prepared.check(method, s_txt, model.positional_embedding.device)  # as relevance will, before any work
        if len(prepared.labels) != len(texts):
            raise ValueError(f"prepared texts are {len(prepared.labels)} texts; this run has "
                             f"{len(texts)}: prepare these texts")
    run = RunSettings(method, s_img, s_txt, signed, truncate, max_size, format)
    job = _Job(Path(out), tuple(texts), weights_stamp(weights), run, model.config.image_resolution,
               model.preprocessing, resume)
    job.out.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in images]
    names = folder_names(paths)  # from the whole list: every shard names every image alike
    mine = [(path, name) for k, (path, name) in enumerate(zip(paths, names)) if k % shard[1] == shard[0]]
    pool = ThreadPoolExecutor(workers, thread_name_prefix="mini_clip") if workers else None
    try:
        yield from _pipeline(model, prepared, job, mine, batch_size, pool)
    finally:
        if pool is not None:  # on an early exit: what is being written finishes, nothing new starts
            pool.shutdown(wait=True, cancel_futures=True)


def _submit(pool: Optional[ThreadPoolExecutor], fn, *args) -> Future:
    """fn(*args) in a worker thread, or now in this one (no pool) with the same Future interface."""
    if pool is not None:
        return pool.submit(fn, *args)
    future = Future()
    try:
        future.set_result(fn(*args))
    except Exception as e:  # delivered by .result(), as a worker's would be
        future.set_exception(e)
    return future


def _pipeline(model: CLIP, texts: PreparedTexts, job: _Job, images: list[tuple[Path, str]], batch_size: int,
              pool: Optional[ThreadPoolExecutor]) -> Iterator[ImageResult]:
    ahead = 2 * batch_size  # images decoded ahead of the model, and drawn results waiting to be taken
    todo = iter(images)
    loading: deque = deque()  # (path, Future of _Loaded or ImageResult), in input order
    slots: deque = deque()  # per image, in input order: [Future of ImageResult], [None] while in `batch`
    batch: list = []  # (slot, _Loaded) waiting for the model

    def load_more():
        for path, name in todo:
            loading.append((path, _submit(pool, _load, path, name, job)))
            if len(loading) >= ahead:
                return

    load_more()
    while loading:
        path, future = loading.popleft()
        load_more()
        try:
            item = future.result()
        except (ImageError, OutputError) as e:
            item = ImageResult(path, error=str(e))
        if isinstance(item, ImageResult):
            done = Future()
            done.set_result(item)
            slots.append([done])
        else:
            slots.append([None])
            batch.append((slots[-1], item))
        if len(batch) == batch_size or (batch and not loading):
            x = torch.stack([loaded.x for _, loaded in batch])
            run = job.settings
            rel = relevance(model, x, texts, run.start_layer, run.start_layer_text, run.method, run.signed)
            for i, (slot, loaded) in enumerate(batch):
                slot[0] = _submit(pool, _draw, loaded, _one(rel, i), job)
            batch = []
        while slots and slots[0][0] is not None and (slots[0][0].done() or len(slots) - len(batch) > ahead):
            yield slots.popleft()[0].result()  # blocks only to bound what waits to be drawn
    for slot in slots:
        yield slot[0].result()


def _one(rel: Relevance, i: int) -> Relevance:
    """Image i's part of a batch's Relevance (copies: the batch's tensors can be freed)."""
    def pick(t):
        return None if t is None else t[i: i + 1].clone()
    return replace(rel, logits=pick(rel.logits), probs=pick(rel.probs), image=pick(rel.image),
                   text=None if rel.text is None else [pick(t) for t in rel.text],
                   image_matrix=pick(rel.image_matrix), text_matrix=pick(rel.text_matrix))


def _load(path: Path, name: str, job: _Job) -> Union[_Loaded, ImageResult]:
    """Decode and preprocess one image, or its finished record (resume). Raises ImageError, OutputError."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None  # missing or unreadable: load_image says which
    if mode is not None and not stat.S_ISREG(mode):
        raise ImageError(f"{path}: not a regular file (a FIFO, device or socket is not read as an image)")
    folder = image_folder(job.out, name)
    expected = stamp(path, list(job.texts), job.weights, job.settings) if mode is not None else None
    if job.resume and expected is not None:
        record = finished(folder, expected, output_paths(folder, job.texts, job.settings.format))
        if record is not None:
            return ImageResult(path, record)
    original = load_image(path)
    x, geometry = preprocess(original, job.resolution, return_geometry=True,  # from the full-size photo
                             preprocessing=job.preprocessing)
    return _Loaded(path, folder, expected, x, geometry, shrink(original, job.settings.max_size))


def _draw(loaded: _Loaded, rel: Relevance, job: _Job) -> ImageResult:
    """Write one image's overlays, sheet and record (last: it marks the image finished)."""
    try:
        record = write_outputs(loaded.folder, loaded.path, loaded.picture, loaded.geometry, rel, job.texts,
                               job.settings.format, loaded.stamp)
        return ImageResult(loaded.path, record, rel)
    except OutputError as e:
        return ImageResult(loaded.path, error=str(e))
