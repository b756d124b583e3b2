"""What CLIP looked at: every (image, text) pair explained by Chefer et al.'s relevance, three baselines or
LeGrad (the methods and their formulas: methods.py).

Numbers match the authors' CLIP notebook (fp32), but the work does not: the original repeats the whole image
per text and calls autograd once per block. Here, in pytorch-grad-cam's shape, one shared forward serves
every method (`_shared_forward`): the blocks before `start` run once, without a graph; from `start` on, each
tower runs once with its probabilities recorded; where the method needs gradients, ONE
`torch.autograd.grad` call, batched over the (image, text) pairs (`methods.grads_per_pair`), gives each pair
the gradients of its own logit for every block of both towers. For those methods the last blocks are run for
the rows that are read alone (class token, end-of-text): the gradient reaching the other rows of their
attention is exactly zero anyway. Then the method's function (`methods.METHODS`) turns the record into maps.
The text side's work before the graph can be done once for many batches of images (`prepare_texts`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .inputs import Images, Texts, as_images, as_tokens
from .methods import DEFAULT_START, METHODS, Recorded, Tower, grads_per_pair, split_pairs
from .model import CLIP, recording
from .tokenizer import token_labels


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
            mean attention for attention; None for gradcam and legrad.
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


# ---------------------------------------------------------------------------------------------------------
# The shared forward: both towers recorded, then the gradients the method asks for, in one call


def _shared_forward(model: CLIP, x: torch.Tensor, texts: PreparedTexts, start: int, start_text: int,
                    gradients: Optional[str]) -> Recorded:
    """Both towers from their start blocks on, recorded, then the gradients asked for (if any).

    x: the image tokens entering block `start` (B, T, C); texts: prepared with block `start_text`.
    """
    device = x.device
    B, N = x.shape[0], texts.tokens.shape[0]
    eot = texts.tokens.argmax(dim=-1)  # (N,) end-of-text positions: 49407 is the largest id
    vblocks, tblocks = model.visual.transformer.resblocks[start:], model.transformer.resblocks[start_text:]
    # Where only gradients are read, the last blocks compute the rows that are read alone (class token,
    # end-of-text): the gradient reaching their other rows is zero, so the numbers do not change. The
    # methods without gradients read every row of the last blocks' probabilities.
    partial = gradients is not None
    cls = torch.zeros(B, 1, dtype=torch.long, device=device)
    t = texts.prefix.detach()  # its own requires_grad flag; the data is shared
    with torch.enable_grad(), recording([*vblocks, *tblocks]):
        x_in, t_in = x.requires_grad_(), t.requires_grad_()  # the graph starts here, frozen weights or not
        x = model.visual.transformer(x_in, start=start, rows=cls if partial else None)
        t = model.transformer(t_in, causal=True, start=start_text, rows=eot[:, None] if partial else None)
        text_features = model.pool_text(t, torch.zeros_like(eot) if partial else eot)  # row 0: the only one
        logits = model.logits(model.visual.pool(x), text_features)
        if not torch.isfinite(logits).all():
            raise ValueError("the model's logits are not finite (NaN or inf): its weights are damaged; "
                             "reload or re-convert the checkpoint")
        vprobs = [b.attn_probs for b in vblocks]  # (B, nh, Q, T) each
        tprobs = [b.attn_probs for b in tblocks]  # (N, nh, Q, L) each
        img_grads, txt_grads = [], []
        if gradients is not None:
            wrt = {"probs": (vprobs, tprobs), "inputs": ([x_in], [t_in])}[gradients]
            img_grads, txt_grads = grads_per_pair(logits, *wrt)
    of_image, of_text = split_pairs(B, N, device)
    return (logits, Tower(x_in, vprobs, img_grads, of_image, torch.zeros_like(of_image)),
            Tower(t_in, tprobs, txt_grads, of_text, eot[of_text]))


# ---------------------------------------------------------------------------------------------------------
# Settings, texts, and the API


def check_recommended(settings: object, model: CLIP) -> dict:
    """Validate recommended settings read from an (untrusted) weights file; returns them as a dict.

    Raises:
        ValueError: not an object, an unknown key or method, or a start layer that is not an int in range.
    """
    keys = {"method", "start_layer", "start_layer_text"}
    if not isinstance(settings, dict) or not set(settings) <= keys:
        raise ValueError("recommended settings must be an object with method, start_layer, "
                         f"start_layer_text; got {str(settings)[:80]}")
    if settings.get("method", "chefer") not in METHODS:
        raise ValueError(f"recommended method {str(settings['method'])[:40]!r} is not one of "
                         f"{', '.join(METHODS)}")
    for key, blocks in (("start_layer", model.config.vision_layers),
                        ("start_layer_text", model.config.transformer_layers)):
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


def check_signed(method: str, signed: bool) -> None:
    """Raise ValueError if `signed` is asked of a method that has no signed variant."""
    if signed and not METHODS[method].signed:
        names = " or ".join(repr(name) for name, m in METHODS.items() if m.signed)
        raise ValueError(f"signed relevance is defined for method {names} only, not {method!r}")


def _start(start: Optional[int], blocks: int, method: str, name: str) -> int:
    """Normalise a start layer to an index in [0, blocks); -1 is the last block, as in the original."""
    start = max(DEFAULT_START[method], -blocks) if start is None else start
    if not -blocks <= start < blocks:
        raise ValueError(f"{name} {start} is out of range for a tower of {blocks} blocks: use -1 (last "
                         f"block only) or 0 .. {blocks - 1} (0 = all blocks), or -{blocks} .. -1 counting "
                         "from the end")
    return start % blocks


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

    def check(self, method: str, start_layer_text: int, device: torch.device) -> None:
        """Raise ValueError unless these texts were prepared for this method, text block and device."""
        if (self.method, self.start_layer_text) != (method, start_layer_text) or self.tokens.device != device:
            raise ValueError(f"texts were prepared for {self.method}, text block {self.start_layer_text}, "
                             f"on {self.tokens.device}; this call is for {method}, text block "
                             f"{start_layer_text}, on {device}: prepare them with the same settings and "
                             "model")


def prepare_texts(model: CLIP, texts: Texts, method: Optional[str] = None,
                  start_layer_text: Optional[int] = None, truncate: bool = False) -> PreparedTexts:
    """Tokenize the texts and run what of the text tower does not depend on the image, once (see
    PreparedTexts); pass the result to `relevance` as its `texts`, with the same method and start layer.

    Args and errors: as `relevance`'s texts, method, start_layer_text and truncate.
    """
    method, _, s_txt = settings(model, method, None, start_layer_text)
    device = model.positional_embedding.device
    tokens = as_tokens(model, texts, truncate).to(device)
    labels = [token_labels(row) for row in tokens.cpu()]
    prefix = features = None
    with torch.no_grad():
        if METHODS[method].forward is not None:  # a forward of its own: the image against the texts' features
            features = model.encode_text(tokens)  # (N, D)
        else:
            # Causal attention: padding after the last end-of-text changes nothing that is read, and its
            # relevance rows and columns are those of the identity; cut it here, put it back at the end.
            prefix = model.embed_text(tokens[:, : int(tokens.argmax(dim=-1).max()) + 1])
            prefix = model.transformer(prefix, causal=True, stop=s_txt)
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
        signed: Chefer only: keep negative evidence (see `methods._chefer`); off gives the original's numbers.
        truncate: cut texts longer than the context instead of raising.
    Returns:
        A Relevance with logits, probabilities, maps and matrices for every pair.
    """
    method, s_img, s_txt = settings(model, method, start_layer, start_layer_text)
    check_signed(method, signed)
    if torch.is_inference_mode_enabled():
        raise RuntimeError("relevance needs gradients: call it outside torch.inference_mode() "
                           "(no_grad is fine)")
    device = model.positional_embedding.device
    if not isinstance(texts, PreparedTexts):
        texts = prepare_texts(model, texts, method, s_txt, truncate)
    texts.check(method, s_txt, device)
    tokens, labels = texts.tokens, texts.labels
    image = as_images(image, model.visual.input_resolution, model.preprocessing).to(device)
    B, N = image.shape[0], tokens.shape[0]
    with torch.no_grad():  # image blocks before the start layer: no graph (the texts' are in `texts`)
        x = model.visual.transformer(model.visual.embed(image), stop=s_img)
    spec = METHODS[method]
    if spec.forward is None:
        logits, *towers = _shared_forward(model, x, texts, s_img, s_txt, spec.gradients)
    else:
        logits, *towers = spec.forward(model, x, texts.features, s_img)
    maps = spec.explain(*towers, signed)  # (image tower, text tower) -> maps and matrices per pair

    P, T = B * N, x.shape[1]
    grid = int(round((T - 1) ** 0.5))
    logits = _cpu(logits)
    text = text_matrix = None
    if maps.text is not None:
        eot = tokens.argmax(dim=-1)  # (N,) end-of-text positions
        txt_map = _cpu(maps.text).view(B, N, -1)
        text = [txt_map[:, j, 1: int(eot[j])] for j in range(N)]
    if maps.text_matrix is not None:  # back to the full context: the cut positions relate only to themselves
        ctx, L = tokens.shape[1], maps.text_matrix.shape[1]
        text_matrix = torch.eye(ctx).expand(P, ctx, ctx).clone()
        text_matrix[:, :L, :L] = _cpu(maps.text_matrix)
        text_matrix = text_matrix.view(B, N, ctx, ctx)
    return Relevance(
        logits=logits,
        probs=logits.softmax(dim=-1),
        image=_cpu(maps.image).reshape(B, N, grid, grid),
        text=text,
        labels=labels,
        tokens=tokens.cpu(),
        image_matrix=None if maps.image_matrix is None else _cpu(maps.image_matrix).view(B, N, T, T),
        text_matrix=text_matrix,
        method=method, start_layer=s_img, start_layer_text=s_txt, signed=signed,
    )


def _cpu(x: torch.Tensor) -> torch.Tensor:
    return x.detach().float().cpu()
