"""SDLM decoding engine (spec sections 3-4): one ``generate()`` for AR, confidence and self-speculative decoding."""

from .blocks import ALGS
from .generate import Generation, generate
from .settings import DecodeSettings
from .stats import DecodeStats

__all__ = ["ALGS", "DecodeSettings", "DecodeStats", "Generation", "generate"]
