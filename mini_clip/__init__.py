"""mini_clip: a small, exact, readable CLIP, and Chefer et al.'s relevance maps for it."""
from .config import PRESETS, CLIPConfig
from .folder import ImageResult, explain_folder
from .image import CropGeometry, ImageError, load_image, preprocess
from .loading import load
from .model import CLIP
from .relevance import PreparedTexts, Relevance, prepare_texts, relevance
from .tokenizer import tokenize
from .weights import WeightsError, save

__all__ = ["CLIP", "CLIPConfig", "PRESETS", "CropGeometry", "ImageError", "ImageResult", "PreparedTexts",
           "Relevance", "WeightsError", "explain_folder", "load", "load_image", "prepare_texts", "preprocess",
           "relevance", "save", "tokenize"]
