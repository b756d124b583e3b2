"""What CLIP looked at: Chefer et al.'s relevance for every (image, text) pair, and three baselines.

Chefer, Gur, Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
Transformers", ICCV 2021. For the score s = logits_per_image[i, j] and each explained block b of a tower:

    cam_b = mean over heads of clamp(ds/dA_b * A_b, min=0)         (A_b: attention probabilities)
    R = I;  for b = start .. last:  R = R + cam_b @ R

The image map is the class token's row of R over the patches; the text map is the end-of-text row over
the prompt's tokens. Numbers match the authors' CLIP notebook (fp32), but the work does not: the original
repeats the whole image per text and calls autograd once per block. Here the blocks before `start` run
once, without a graph; from `start` on, each tower runs once with its probabilities recorded; then ONE
`torch.autograd.grad` call, batched over the (image, text) pairs (`is_grads_batched`: one backward per
pair, vectorised), gives each pair the gradients of its own logit for every block of both towers. The
last blocks are run for the rows that are read alone (class token, end-of-text): the gradient reaching
the other rows of their attention is exactly zero anyway.

Baselines (same API, `method=`):
- "attention": one block's attention (the start layer's: the last block by default), mean over heads,
  class (or end-of-text) row;
- "rollout": Abnar & Zuidema 2020, R = prod over blocks of (0.5 I + 0.5 mean_h A_b), rows renormalised;
- "gradcam": Selvaraju et al. 2017 on the tokens entering the start layer's block (the last by default):
  relu(sum_c w_c x_tc), with w_c the mean gradient over the tokens (patches; for text, the prompt's
  tokens). This is Grad-CAM on token features, as pytorch-grad-cam applies it to ViTs; the "GradCAM" of
  Chefer et al.'s own code weights the last block's attention map instead.

And a newer gradient method made for CLIP-like ViTs, "legrad" (Bousselham et al., "LeGrad: An Explainability
Method for Vision Transformers via Feature Formation Sensitivity", ICCV 2025): for each block l from the
start layer (the authors' default: the last two), the image embedding that block's tokens would give
(ln_post of their MEAN, then proj, normalised) is scored against the normalised text embedding, s_l; then

    map = sum over l of  mean over heads and query rows of clamp(ds_l/dA_l, min=0)   (patch columns)

It explains the image only (`text` is None). Each block's input is detached, so ds_l/dA_l is the only
gradient reaching A_l and one batched backward of sum_l s_l gives every layer's term at once.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .image import OPENAI, ImageLike, Preprocessing, preprocess
from .model import CLIP, recording
from .tokenizer import EOT, token_labels, tokenize

METHODS = ("chefer", "attention", "rollout", "gradcam", "legrad")
# start layer when the caller gives none: the original's default for Chefer's method (last block only);
# all blocks for rollout, whose point is to multiply through them; the last two for LeGrad (its authors'
# layer_index=-2); the last block for the others.
DEFAULT_START = {"chefer": -1, "attention": -1, "rollout": 0, "gradcam": -1, "legrad": -2}


@dataclass
class Relevance:
    """Explanations of every (image i, text j) pair; tensors are detached, on the CPU, in fp32.

    Attributes:
        logits: logits_per_image (B, N).
        probs: softmax of the logits over the texts (B, N).
        image: image relevance over the patch grid (B, N, grid, grid).
        text: per text j, its relevance over the prompt's tokens (start and end excluded), (B, n_j); None
            for legrad, which explains the image only.
        labels: per text j, the n_j token strings the scores belong to.
        tokens: the token ids explained (N, context).
        image_matrix: the image relevance matrix (B, N, T, T): R for chefer, the product for rollout, the
            mean attention for attention; None for gradcam.
        text_matrix: chefer's text relevance matrix R (B, N, L, L), L the token columns given (the context
            for strings); None for the baselines.
    """
    logits: torch.Tensor
    probs: torch.Tensor
    image: torch.Tensor
    text: Optional[list[torch.Tensor]]
    labels: list[list[str]]
    tokens: torch.Tensor
    image_matrix: Optional[torch.Tensor]
    text_matrix: Optional[torch.Tensor]
    method: str = "chefer"
    start_layer: int = -1
    start_layer_text: int = -1
    signed: bool = False


def check_recommended(settings: object, model: CLIP) -> dict:
    """Validate recommended settings read from an (untrusted) weights file; returns them as a dict.

    Raises:
        ValueError: not an object, an unknown key or method, or a start layer that is not an int in range.
    """
    if not isinstance(settings, dict) or not set(settings) <= {"method", "start_layer", "start_layer_text"}:
        raise ValueError(f"recommended settings must be an object with method, start_layer, start_layer_text; "
                         f"got {str(settings)[:80]}")
    if settings.get("method", "chefer") not in METHODS:
        raise ValueError(f"recommended method {str(settings['method'])[:40]!r} is not one of {', '.join(METHODS)}")
    for key, blocks in (("start_layer", model.config.vision_layers), ("start_layer_text", model.config.transformer_layers)):
        value = settings.get(key, -1)
        if type(value) is not int or not -blocks <= value < blocks:
            raise ValueError(f"recommended {key} {str(value)[:20]} is not a block of a tower of {blocks}")
    return dict(settings)


def settings(model: CLIP, method: Optional[str] = None, start_layer: Optional[int] = None,
             start_layer_text: Optional[int] = None,
             names: tuple[str, str] = ("start_layer", "start_layer_text")) -> tuple[str, int, int]:
    """The method and start layers an explanation uses: what is given, else the weights' recommendation
    (its start layers only for its own method), else the original's defaults (DEFAULT_START).

    Args:
        names: how the caller spells the two start layers in error messages (the CLI: its flags).
    Returns:
        (method, image start block, text start block), the blocks as indices from 0.
    Raises:
        ValueError: an unknown method, or a start layer outside its tower, with the valid range.
    """
    advice = model.recommended  # what the weights file recommends; {} for OpenAI's
    method = method or advice.get("method", "chefer")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if advice.get("method", "chefer") == method:  # the weights' start layers are for their method only
        start_layer = advice.get("start_layer") if start_layer is None else start_layer
        start_layer_text = advice.get("start_layer_text") if start_layer_text is None else start_layer_text
    return (method, _start(start_layer, model.config.vision_layers, method, names[0]),
            _start(start_layer_text, model.config.transformer_layers, method, names[1]))


def _start(start: Optional[int], blocks: int, method: str, name: str) -> int:
    """Normalise a start layer to an index in [0, blocks); -1 is the last block, as in the original."""
    start = max(DEFAULT_START[method], -blocks) if start is None else start
    if not -blocks <= start < blocks:
        raise ValueError(f"{name} {start} is out of range for a tower of {blocks} blocks: use -1 (last block "
                         f"only) or 0 .. {blocks - 1} (0 = all blocks), or -{blocks} .. -1 counting from the end")
    return start % blocks


def _cams_chefer(probs: torch.Tensor, grads: torch.Tensor, signed: bool) -> torch.Tensor:
    """(P, nh, Q, T) probabilities and their gradients -> (P, Q, T) cam. Unsigned (the original):
    clamp(G * A, min=0) per head, then the mean over heads. Signed: the mean over heads of G * A with
    no clamp, so evidence against the text (negative) survives and heads can cancel each other."""
    cam = grads.float() * probs.detach().float()  # detached: R must not hold the forward's graph alive
    return (cam if signed else cam.clamp(min=0)).mean(dim=1)


def _accumulate(cams: Sequence[torch.Tensor], size: int, rows: torch.Tensor) -> torch.Tensor:
    """R = I; R = R + cam_b @ R for each block in order. A cam (P, Q, T) with Q < T rows (a last block
    computed only where it is read) holds the rows at positions `rows` (P, Q); its other rows are zero."""
    R = torch.eye(size, device=cams[0].device).expand(cams[0].shape[0], size, size).clone()
    for cam in cams:
        if cam.shape[1] == size:
            R = R + cam @ R
        else:
            R = R.scatter_add(1, rows[:, :, None].expand(-1, -1, size), cam @ R)
    return R


def _rollout(probs: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """Abnar & Zuidema: R = A'_last ... A'_start with A' = 0.5 I + 0.5 mean_h A, rows renormalised."""
    R = torch.eye(size, device=probs[0].device).expand(probs[0].shape[0], size, size).clone()
    for A in probs:
        A = 0.5 * torch.eye(size, device=A.device)[: A.shape[2]] + 0.5 * A.float().mean(dim=1)  # (P, Q, T)
        A = A / A.sum(dim=-1, keepdim=True)
        R = A @ R
    return R


def _gradcam(x: torch.Tensor, grad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Grad-CAM over tokens: x, grad (P, T, C); mask (P, T) marks the tokens that form the map."""
    mask = mask.to(x.dtype).unsqueeze(-1)  # (P, T, 1)
    weights = (grad * mask).sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True)  # (P, 1, C)
    return ((weights * x).sum(dim=-1) * mask.squeeze(-1)).clamp(min=0)  # (P, T)


def _legrad(model: CLIP, x: torch.Tensor, text: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LeGrad from block `start` on, for every (image, text) pair. x: the tokens entering block `start`
    (B, T, C); text: the texts' features (N, D), a constant as in the authors' code; returns (logits (B, N),
    maps (B*N, T-1) over the patches; pair p = i * N + j)."""
    visual, blocks = model.visual, model.visual.transformer.resblocks[start:]
    unit = text / text.norm(dim=-1, keepdim=True)
    B, N = x.shape[0], text.shape[0]
    with torch.enable_grad(), recording(blocks):
        score = 0
        for block in blocks:
            x = block(x.detach().requires_grad_())  # detached: s_l reaches A_l through this block only
            f = visual.ln_post(x.mean(dim=1)) @ visual.proj  # (B, D): every token pooled, class token too
            score = score + (f / f.norm(dim=-1, keepdim=True)) @ unit.t()  # (B, N): s_l summed over l
        # one backward per pair, batched: pair p's grad_output is one-hot at score[i, j]
        one_hot = torch.eye(B * N, device=x.device, dtype=score.dtype).view(B * N, B, N)
        grads = torch.autograd.grad(score, [b.attn_probs for b in blocks], one_hot, is_grads_batched=True)
    pairs, of_image = torch.arange(B * N, device=x.device), torch.arange(B, device=x.device).repeat_interleave(N)
    maps = sum(G[pairs, of_image].float().clamp(min=0).mean(dim=1).mean(dim=1)[:, 1:] for G in grads)
    return model.logits(visual.pool(x.detach()), text), maps


# How to fix images given as raw pixels.
PREPROCESS_HINT = ("pass a PIL image or a path (preprocessed here at the model's resolution), or "
                   "preprocess it with the preprocess that mini_clip.load returns")
# OpenAI's normalisation maps pixels in [0, 1] into about [-1.8, 2.3]: values above this, with none below
# zero, are pixels in [0, 255] that were not normalised.
MAX_NORMALISED = 10.0

Images = Union[torch.Tensor, ImageLike, Sequence[Union[torch.Tensor, ImageLike]]]
Texts = Union[str, Sequence[str], torch.Tensor, np.ndarray, Sequence[Sequence[int]]]


def _dtype(x: torch.Tensor) -> str:
    return str(x.dtype).removeprefix("torch.")


def _as_images(image: Images, size: int, preprocessing: Preprocessing = OPENAI) -> torch.Tensor:
    """Whatever `relevance` accepts as images -> a float batch (B, 3, size, size), checked."""
    if isinstance(image, (list, tuple)):
        if not image:
            raise ValueError("no images given: pass at least one (PIL images, paths, or a tensor)")
        return torch.cat([_as_images(one, size, preprocessing) for one in image])  # each checked alone, then one batch
    if not isinstance(image, torch.Tensor):
        if not isinstance(image, (Image.Image, str, os.PathLike, np.ndarray)):
            raise TypeError(f"image must be a preprocessed tensor (B, 3, {size}, {size}), a PIL image, a "
                            f"path, a uint8 numpy array, or a list of these; got {type(image).__name__}")
        return preprocess(image, size, preprocessing=preprocessing)[None]  # (1, 3, size, size)
    if not image.is_floating_point():
        raise ValueError(f"image is a {_dtype(image)} tensor of raw pixels: {PREPROCESS_HINT}")
    image = image[None] if image.dim() == 3 else image
    if image.dim() != 4 or tuple(image.shape[1:]) != (3, size, size) or image.shape[0] == 0:
        raise ValueError(f"expected preprocessed images of shape (B, 3, {size}, {size}), B >= 1, got "
                         f"{tuple(image.shape)}: use the preprocess that mini_clip.load returns "
                         f"(size {size})")
    if not torch.isfinite(image).all():
        raise ValueError("the image tensor holds NaN or inf values: preprocess the image again")
    if image.min() >= 0 and image.max() > MAX_NORMALISED:
        raise ValueError(f"image values lie in [0, {float(image.max()):g}]: raw pixels, not normalised; "
                         f"{PREPROCESS_HINT}")
    return image


def _as_tokens(model: CLIP, texts: Texts, truncate: bool) -> torch.Tensor:
    """Strings or token ids (a tensor, an array, rows of ints) -> ids (N, <= context), checked row by row."""
    strings = isinstance(texts, (list, tuple)) and all(isinstance(text, str) for text in texts)
    if isinstance(texts, str) or strings:
        if not texts:
            raise ValueError("no texts given: pass at least one string")
        return tokenize(texts, model.context_length, truncate)
    if isinstance(texts, np.ndarray):
        texts = torch.from_numpy(texts)
    elif isinstance(texts, (list, tuple)):  # rows of ids, or a mistake such as a string beside a row
        if any(isinstance(row, (str, bytes)) or not hasattr(row, "__len__") for row in texts):
            kinds = ", ".join(sorted({type(row).__name__ for row in texts}))
            raise TypeError("texts must be strings, or rows of token ids (a LongTensor (N, <= context) as "
                            f"mini_clip.tokenize makes, or lists of ints), not a mix; got {kinds}")
        try:
            texts = torch.tensor([[int(i) for i in row] for row in texts])
        except (TypeError, ValueError) as e:
            raise ValueError(f"rows of token ids must be ints, all of one length (pad with 0): {e}") from None
    if not isinstance(texts, torch.Tensor):
        raise TypeError(f"texts must be a string, a list of strings or token ids; got {type(texts).__name__}")
    if texts.is_floating_point() or texts.is_complex() or texts.dtype == torch.bool:
        raise ValueError(f"token ids must be integers, got a {_dtype(texts)} tensor: pass the LongTensor "
                         "that mini_clip.tokenize returns (or ids.long())")
    tokens = texts.long()
    context = model.context_length
    if tokens.dim() != 2 or tokens.shape[0] == 0 or tokens.shape[1] > context:
        raise ValueError(f"expected token ids of shape (texts, <= {context}), at least one text, "
                         f"got {tuple(tokens.shape)}")
    vocab_size = model.token_embedding.num_embeddings
    for j, row in enumerate(tokens):
        outside = row[(row < 0) | (row >= vocab_size)]
        if len(outside):
            raise ValueError(f"text {j} has token id {int(outside[0])}, outside the model's vocabulary "
                             f"[0, {vocab_size}): make ids with mini_clip.tokenize")
        if not (row == EOT).any():
            raise ValueError(f"text {j} has no end-of-text token ({EOT}); every row of token ids needs one, "
                             "as mini_clip.tokenize makes")
    return tokens


@dataclass(frozen=True)
class PreparedTexts:
    """Texts made ready for `relevance` once, for any number of image batches: everything of the text side
    that does not depend on the image. Chefer's, Grad-CAM's and the baselines' text maps do depend on it
    (they come from each pair's gradients, or from the same forward), so only what comes before the graph
    is kept: the token ids and labels, and the tokens entering text block `start_layer_text` (the blocks
    before it run without a graph, on the texts alone). LeGrad uses the texts' features only: kept whole.
    The same numbers as `relevance` computes from strings: the same calls on the same inputs.

    Attributes:
        tokens: the token ids (N, context); labels: per text, its token strings.
        method, start_layer_text: the settings it was prepared for (resolved, as `settings` gives them).
        prefix: the text tokens entering block start_layer_text (N, L, width), L up to the last
            end-of-text; None for legrad.
        features: legrad's text features (N, embed_dim); None for the other methods.
    """
    tokens: torch.Tensor
    labels: list[list[str]]
    method: str
    start_layer_text: int
    prefix: Optional[torch.Tensor]
    features: Optional[torch.Tensor]


def prepare_texts(model: CLIP, texts: Texts, method: Optional[str] = None, start_layer_text: Optional[int] = None,
                  truncate: bool = False) -> PreparedTexts:
    """Tokenize the texts and run what of the text tower does not depend on the image, once (see
    PreparedTexts); pass the result to `relevance` as its `texts`, with the same method and start layer.

    Args and errors: as `relevance`'s texts, method, start_layer_text and truncate.
    """
    method, _, s_txt = settings(model, method, None, start_layer_text)
    device = model.positional_embedding.device
    tokens = _as_tokens(model, texts, truncate).to(device)
    labels = [token_labels(row) for row in tokens.cpu()]
    prefix = features = None
    with torch.no_grad():
        if method == "legrad":
            features = model.encode_text(tokens)  # (N, D)
        else:
            # Causal attention: padding after the last end-of-text changes nothing that is read, and its
            # relevance rows and columns are those of the identity; cut it here, put it back at the end.
            prefix = model.embed_text(tokens[:, : int(tokens.argmax(dim=-1).max()) + 1])
            for block in model.transformer.resblocks[:s_txt]:
                prefix = block(prefix, causal=True)
    return PreparedTexts(tokens, labels, method, s_txt, prefix, features)


def relevance(model: CLIP, image: Images, texts: Texts,
              start_layer: Optional[int] = None, start_layer_text: Optional[int] = None,
              method: Optional[str] = None, signed: bool = False, truncate: bool = False) -> Relevance:
    """Explain every (image, text) pair.

    Args:
        model: a CLIP (its train/eval mode, requires_grad flags and .grad are left untouched).
        image: preprocessed images, a float tensor (B, 3, R, R) or one image (3, R, R), R the model's
            `visual.input_resolution`; or a PIL image, a path, or a uint8 numpy array (H, W, 3), which go
            through `mini_clip.preprocess(image, R)`; or a list of any of these (one batch). Refused with a
            ValueError: integer tensors (raw pixels: preprocess them), tensors of another shape, an empty
            batch, values that are not finite or not normalised (none below 0 and some above 10).
        texts: a string or a list of strings (tokenized with the model's context), or token ids
            (N, <= context): a LongTensor as mini_clip.tokenize makes, an integer numpy array, rows of ints.
            Refused with a ValueError: no texts, float ids, ids outside [0, vocab_size), a row without
            end-of-text. Or `prepare_texts`' answer, for the same method and text start layer: then the
            texts' work before the graph is not done again (many batches of images, one set of texts).
        start_layer, start_layer_text: first block explained in each tower: -1 the last block only
            (the original's default), k blocks k..last, 0 all blocks; None: the weights' recommendation
            (`model.recommended`, set by mini_clip.load) when it is for this method, else the method's
            default (DEFAULT_START).
        method: "chefer", "attention", "rollout", "gradcam" or "legrad" (image maps only); None: the weights'
            recommended method, else "chefer".
        signed: Chefer only: keep negative evidence (see `_cams_chefer`); off gives the original's numbers.
        truncate: cut texts longer than the context instead of raising.
    Returns:
        A Relevance with logits, probabilities, maps and matrices for every pair.
    """
    method, s_img, s_txt = settings(model, method, start_layer, start_layer_text)
    if signed and method != "chefer":
        raise ValueError(f"signed relevance is defined for method 'chefer' only, not {method!r}")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("relevance needs gradients: call it outside torch.inference_mode() (no_grad is fine)")
    device = model.positional_embedding.device
    if not isinstance(texts, PreparedTexts):
        texts = prepare_texts(model, texts, method, s_txt, truncate)
    elif (texts.method, texts.start_layer_text) != (method, s_txt) or texts.tokens.device != device:
        raise ValueError(f"texts were prepared for {texts.method}, text block {texts.start_layer_text}, on "
                         f"{texts.tokens.device}; this call is for {method}, text block {s_txt}, on {device}: "
                         "prepare them with the same settings and model")
    tokens, labels = texts.tokens, texts.labels
    image = _as_images(image, model.visual.input_resolution, model.preprocessing).to(device)
    visual, vblocks, tblocks = model.visual, model.visual.transformer.resblocks, model.transformer.resblocks
    B, N = image.shape[0], tokens.shape[0]
    eot = tokens.argmax(dim=-1)  # (N,) end-of-text positions: 49407 is the largest id
    T = visual.positional_embedding.shape[0]

    with torch.no_grad():  # image blocks before the start layer: no graph (the texts' are in `texts`)
        x = visual.embed(image)
        for block in vblocks[:s_img]:
            x = block(x)
    grid = int(round((T - 1) ** 0.5))
    if method == "legrad":  # its own forward: per-block pooled scores, every row of every block
        logits, maps = _legrad(model, x, texts.features, s_img)
        logits = logits.detach().float().cpu()
        return Relevance(logits=logits, probs=logits.softmax(dim=-1), text=None, labels=labels,
                         image=maps.detach().float().cpu().reshape(B, N, grid, grid), tokens=tokens.cpu(),
                         image_matrix=None, text_matrix=None, method=method, start_layer=s_img,
                         start_layer_text=s_txt)
    t, L = texts.prefix.detach(), texts.prefix.shape[1]  # its own requires_grad flag; the data is shared
    P = B * N  # pairs, p = i * N + j
    of_image = torch.arange(B, device=device).repeat_interleave(N)  # (P,) the image of each pair
    of_text = torch.arange(N, device=device).repeat(B)  # (P,) the text of each pair
    with torch.enable_grad(), recording([*vblocks[s_img:], *tblocks[s_txt:]]):
        x_in, t_in = x.requires_grad_(), t.requires_grad_()  # the graph starts here, frozen weights or not
        # The last blocks compute only the rows that are read (class token, end-of-text): the gradient
        # reaching their other rows is zero, so Chefer's and Grad-CAM's numbers do not change. The
        # baselines without gradients read every row of the last image block.
        partial = method in ("chefer", "gradcam")
        first = torch.zeros(B, 1, dtype=torch.long, device=device)
        for block in vblocks[s_img:-1]:
            x = block(x)
        x = vblocks[-1](x, rows=first if partial else None)
        for block in tblocks[s_txt:-1]:
            t = block(t, causal=True)
        t = tblocks[-1](t, causal=True, rows=eot[:, None] if partial else None)
        logits = model.logits(visual.pool(x), model.pool_text(t, torch.zeros_like(eot) if partial else eot))
        if not torch.isfinite(logits).all():
            raise ValueError("the model's logits are not finite (NaN or inf): its weights are damaged; "
                             "reload or re-convert the checkpoint")
        vprobs = [b.attn_probs for b in vblocks[s_img:]]  # (B, nh, Q, T) each
        tprobs = [b.attn_probs for b in tblocks[s_txt:]]  # (N, nh, L, L) each
        if method in ("chefer", "gradcam"):
            # One backward per pair, batched (vmap) in ONE call: pair p's grad_output is one-hot at
            # logits[i, j], so image i receives d logits[i, j] and text j likewise, the others zero.
            one_hot = torch.eye(P, device=device, dtype=logits.dtype).view(P, B, N)
            inputs = vprobs + tprobs if method == "chefer" else [x_in, t_in]
            grads = torch.autograd.grad(logits, inputs, one_hot, is_grads_batched=True)
            pairs, n_img = torch.arange(P, device=device), len(vprobs) if method == "chefer" else 1
            img_grads = [G[pairs, of_image] for G in grads[:n_img]]  # (P, ...) pair p's gradient for its image
            txt_grads = [G[pairs, of_text] for G in grads[n_img:]]  # (P, ...) and for its text
    if method == "chefer":
        R_img = _accumulate([_cams_chefer(A[of_image], G, signed) for A, G in zip(vprobs, img_grads)], T,
                            first[of_image])
        R_txt = _accumulate([_cams_chefer(A[of_text], G, signed) for A, G in zip(tprobs, txt_grads)], L,
                            eot[of_text][:, None])
    elif method == "gradcam":
        patches = torch.arange(T, device=device).expand(P, T) > 0
        pos = torch.arange(L, device=device)
        prompt = (pos > 0) & (pos < eot[of_text][:, None])  # (P, L) tokens strictly inside start..end
        img_map = _gradcam(x_in.detach()[of_image], img_grads[0], patches)[:, 1:]
        txt_map = _gradcam(t_in.detach()[of_text], txt_grads[0], prompt)
        R_img = R_txt = None
    elif method == "rollout":
        R_img = _rollout([A.detach() for A in vprobs], T)[of_image]
        R_txt = _rollout([A.detach() for A in tprobs], L)[of_text]
    else:  # attention: the start layer's block, mean over heads
        R_img = vprobs[0].detach().float().mean(dim=1)[of_image]
        R_txt = tprobs[0].detach().float().mean(dim=1)[of_text]

    logits = logits.detach().float().cpu()
    if R_img is not None:
        img_map = R_img[:, 0, 1:]
        txt_map = R_txt[torch.arange(P, device=device), eot[of_text]]  # (P, L): end-of-text rows
    ctx = tokens.shape[1]
    text_matrix = None
    if method == "chefer":  # back to the full context: the cut positions relate only to themselves
        text_matrix = torch.eye(ctx).expand(P, ctx, ctx).clone()
        text_matrix[:, :L, :L] = R_txt.detach().float().cpu()
        text_matrix = text_matrix.view(B, N, ctx, ctx)
    txt_map = txt_map.detach().float().cpu().view(B, N, L)
    return Relevance(
        logits=logits,
        probs=logits.softmax(dim=-1),
        image=img_map.detach().float().cpu().reshape(B, N, grid, grid),
        text=[txt_map[:, j, 1: int(eot[j])] for j in range(N)],
        labels=labels,
        tokens=tokens.cpu(),
        image_matrix=None if R_img is None else R_img.detach().float().cpu().view(B, N, T, T),
        text_matrix=text_matrix,
        method=method, start_layer=s_img, start_layer_text=s_txt, signed=signed,
    )
