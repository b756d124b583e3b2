"""mini_clip: a small, exact, readable CLIP, and Chefer et al.'s relevance maps for it."""
from .image import CropGeometry, ImageError, load_image, preprocess
from .model import CLIP, PRESETS, CLIPConfig
from .relevance import Relevance, relevance
from .tokenizer import tokenize
from .weights import WeightsError, load, save

__all__ = ["CLIP", "CLIPConfig", "PRESETS", "CropGeometry", "ImageError", "Relevance", "WeightsError",
           "load", "load_image", "preprocess", "relevance", "save", "tokenize"]
