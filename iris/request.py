"""The plain request of one generation: journaled, sent between processes, validated in one place."""

from __future__ import annotations

from dataclasses import dataclass

from iris.errors import BadRequest
from iris.prompts import parse_prompt


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
    count: int = 1  # pictures: 1, or 4 (four-up: seeds seed..seed+3, one job, posted as one 2×2 grid)

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
        if self.count not in (1, 4):
            raise BadRequest(f"count must be 1 or 4, got {self.count}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise BadRequest("the seed must be a whole number between 0 and 2^63 - 1")
        return self
