"""What short jobs answer, as plain dataclasses: the bot and the CLI read these without loading torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float


@dataclass(frozen=True)
class Phrase:
    text: str
    category: str  # shapes | objects | scenes | styles | media | colours
    score: float  # probability over the vocabulary (softmax at the model's logit scale)


@dataclass(frozen=True)
class Description:
    phrases: list[Phrase]  # the best few, best first
    prompt: str  # a ready /imagine prompt built from the best phrase of each part


@dataclass(frozen=True)
class Upscaled:
    png: bytes  # the upscaled picture, PNG
    width: int  # px
    height: int  # px
    label: str  # how it was made, for people: the model's name, or the Lanczos fallback
