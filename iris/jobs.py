"""Plain request types and prompt parsing, shared by the CLI, the bot and the engine (no torch here)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from iris.errors import BadRequest

# "text:weight" or "text:weight:stop" at the end of a part; a colon inside the text is left alone.
_WEIGHT = re.compile(
    r"^(?P<text>.*?)\s*:\s*(?P<w>[-+]?\d*\.?\d+)(?:\s*:\s*(?P<stop>[-+]?\d*\.?\d+|-inf))?\s*$", re.S
)


@dataclass(frozen=True)
class PromptPart:
    text: str
    weight: float = 1.0  # < 0 pushes the image away from this text
    stop: float = -math.inf  # stop pulling once the spherical distance is below this


def parse_prompt(prompt: str, max_chars: int = 500, max_parts: int = 8) -> list[PromptPart]:
    """`"a watercolor fox:1 | blurry:-0.5"` → weighted parts. Raises BadRequest on unusable prompts."""
    if len(prompt) > max_chars:
        raise BadRequest(f"the prompt is {len(prompt):,} characters long; the limit is {max_chars:,}")
    parts = []
    for raw in prompt.split("|"):
        raw = raw.strip()
        if not raw:
            continue
        m = _WEIGHT.match(raw)
        if m and m.group("text"):
            stop = m.group("stop")
            part = PromptPart(
                m.group("text").strip(), float(m.group("w")), float(stop) if stop else -math.inf
            )
        else:
            part = PromptPart(raw)
        if not math.isfinite(part.weight):
            raise BadRequest(f"the weight of {part.text!r} is not a number")
        parts.append(part)
    if not parts:
        raise BadRequest("the prompt is empty")
    if len(parts) > max_parts:
        raise BadRequest(f"the prompt has {len(parts)} parts; the limit is {max_parts}")
    if not any(p.weight > 0 for p in parts):
        raise BadRequest("the prompt needs at least one part with a positive weight")
    return parts


@dataclass(frozen=True)
class ImagineRequest:
    """One generation, as asked for. Plain data: it is journaled and sent between processes."""

    prompt: str
    seed: int | None = None  # None: the engine draws one and reports it
    steps: int = 300
    width: int = 256  # px; the engine rounds down to the VQGAN's factor
    height: int = 256  # px
    cutouts: int = 32  # augmented views per step
    lr: float = 0.1  # Adam learning rate
    generator: str = "vqgan"  # "vqgan" or "pixels"
    init_image: bytes | None = None  # encoded image file to start from (PNG/JPEG/...)

    def validated(self, max_steps: int, max_side: int, max_prompt_chars: int) -> ImagineRequest:
        """Check limits; returns self so it chains. Raises BadRequest with a message fit for users."""
        parse_prompt(self.prompt, max_prompt_chars)
        if not 1 <= self.steps <= max_steps:
            raise BadRequest(f"steps must be between 1 and {max_steps}, got {self.steps}")
        for side, value in (("width", self.width), ("height", self.height)):
            if not 16 <= value <= max_side:
                raise BadRequest(f"{side} must be between 16 and {max_side} px, got {value}")
        if not 1 <= self.cutouts <= 128:
            raise BadRequest(f"cutouts must be between 1 and 128, got {self.cutouts}")
        if not 0 < self.lr <= 10:
            raise BadRequest(f"the learning rate must be in (0, 10], got {self.lr}")
        if self.generator not in ("vqgan", "pixels"):
            raise BadRequest(f"generator must be vqgan or pixels, got {self.generator!r}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise BadRequest("the seed must be a whole number between 0 and 2^63 - 1")
        return self


def parse_labels(text: str) -> list[str]:
    """Comma-separated labels; double quotes keep commas: `cat, "salt, pepper", dog`."""
    labels: list[str] = []
    buf: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            labels.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    labels.append("".join(buf))
    return list(dict.fromkeys(lb.strip() for lb in labels if lb.strip()))


def check_labels(labels: list[str], max_labels: int = 50, max_chars: int = 100) -> list[str]:
    if not labels:
        raise BadRequest('give at least one label, e.g. --labels "cat, dog, a person"')
    if len(labels) > max_labels:
        raise BadRequest(f"{len(labels)} labels given; the limit is {max_labels}")
    long = [lb for lb in labels if len(lb) > max_chars]
    if long:
        raise BadRequest(f"labels are limited to {max_chars} characters; {long[0][:40]!r}... is longer")
    return labels
