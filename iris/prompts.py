"""Prompt text: the one `text:weight` syntax (prompts and /find queries) and /imagine's prompt parsing.

No torch here: the CLI, the bot and the engine all parse prompts the same way.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from iris.errors import BadRequest

MAX_WEIGHT = 100.0  # |weight| above this is refused (1e40 is finite in Python, not in float32)

# "text:weight" or "text:weight:stop" at the end of a part; a colon inside the text is left alone.
_WEIGHT = re.compile(
    r"^(?P<text>.*?)\s*:\s*(?P<w>[-+]?\d*\.?\d+)(?:\s*:\s*(?P<stop>[-+]?\d*\.?\d+|-inf))?\s*$", re.S
)


@dataclass(frozen=True)
class PromptPart:
    """One `text:weight[:stop]` part (of a prompt, or a /find query term, which ignores `stop`)."""

    text: str
    weight: float = 1.0  # < 0 pushes the image away from this text
    stop: float = -math.inf  # stop pulling once the spherical distance is below this


def split_weight(raw: str) -> PromptPart:
    """`"a fox:2"` → (a fox, 2); `"a fox:2:0.3"` → with stop 0.3; `"photo: a fox"` stays one text.

    Raises BadRequest for a weight that is not a usable number."""
    raw = raw.strip()
    m = _WEIGHT.match(raw)
    if not (m and m.group("text").strip()):
        return PromptPart(raw)
    text, w, stop = m.group("text").strip(), float(m.group("w")), m.group("stop")
    if not math.isfinite(w) or abs(w) > MAX_WEIGHT:
        raise BadRequest(
            f"the weight of {text[:40]!r} must be a number between -{MAX_WEIGHT:g} and {MAX_WEIGHT:g}"
        )
    s = float(stop) if stop else -math.inf
    if stop and stop != "-inf" and (not math.isfinite(s) or abs(s) > 10):
        raise BadRequest(f"the stop value of {text[:40]!r} must be between -10 and 10")
    return PromptPart(text, w, s)


def parse_prompt(prompt: str, max_chars: int = 500, max_parts: int = 8) -> list[PromptPart]:
    """`"a watercolor fox:1 | blurry:-0.5"` → weighted parts. Raises BadRequest on unusable prompts."""
    if len(prompt) > max_chars:
        raise BadRequest(f"the prompt is {len(prompt):,} characters long; the limit is {max_chars:,}")
    parts = []
    for raw in prompt.split("|"):
        if not raw.strip():
            continue
        parts.append(split_weight(raw))
    if not parts:
        raise BadRequest("the prompt is empty")
    if len(parts) > max_parts:
        raise BadRequest(f"the prompt has {len(parts)} parts; the limit is {max_parts}")
    if not any(p.weight > 0 for p in parts):
        raise BadRequest("the prompt needs at least one part with a positive weight")
    return parts
