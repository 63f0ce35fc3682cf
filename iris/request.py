"""The plain request of one generation: journaled, sent between processes, validated in one place."""

from __future__ import annotations

import math
from dataclasses import dataclass

from iris.errors import BadRequest
from iris.images import DEFAULT_LIMITS, ImageLimits, load_image
from iris.prompts import MAX_WEIGHT, parse_prompt

PROFILES = ("iris", "classic", "none")  # cutout recipes, defined in models/recipes.py
GENERATORS = ("vqgan", "pixels")  # VQGAN latents, or RGB pixels optimised directly
ASPECTS = ("square", "landscape", "portrait")  # picture shapes a person picks (/imagine, /settings)
MAX_IMAGE_PROMPTS = 4


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
    profile: str = "iris"  # cutout recipe: "iris", "classic" (the reference scripts') or "none"
    image_prompts: tuple[tuple[bytes, float], ...] = ()  # (encoded image file, weight) pulled toward
    init_weight: float = 0.0  # pull toward the init image (decaying); 0: none
    ema: float = 0.0  # decay of an exponential moving average of the latents shown as the image; 0: off
    count: int = 1  # pictures: 1, or 4 (four-up: seeds seed..seed+3, one job, posted as one 2×2 grid)

    def validated(
        self,
        max_steps: int,
        max_side: int,
        max_prompt_chars: int,
        images: ImageLimits = DEFAULT_LIMITS,
    ) -> ImagineRequest:
        """Check limits; returns self so it chains. Raises BadRequest (BadImage for an unusable image)
        with a message fit for users."""
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
        if self.generator not in GENERATORS:
            raise BadRequest(f"generator must be vqgan or pixels, got {self.generator!r}")
        if self.count not in (1, 4):
            raise BadRequest(f"count must be 1 or 4, got {self.count}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise BadRequest("the seed must be a whole number between 0 and 2^63 - 1")
        if self.profile not in PROFILES:
            raise BadRequest(f"profile must be one of {', '.join(PROFILES)}, got {self.profile!r}")
        if not (math.isfinite(self.init_weight) and 0 <= self.init_weight <= MAX_WEIGHT):
            raise BadRequest(f"the init weight must be between 0 and {MAX_WEIGHT:g}, got {self.init_weight}")
        if self.init_weight and self.init_image is None:
            raise BadRequest("an init weight needs an init image to pull toward")
        if not (math.isfinite(self.ema) and 0 <= self.ema < 1):
            raise BadRequest(f"the EMA decay must be at least 0 and below 1 (e.g. 0.98), got {self.ema}")
        if len(self.image_prompts) > MAX_IMAGE_PROMPTS:
            raise BadRequest(
                f"{len(self.image_prompts)} image prompts were given; the limit is {MAX_IMAGE_PROMPTS}"
            )
        if self.init_image is not None:
            load_image(self.init_image, images, name="init image")
        for i, (data, weight) in enumerate(self.image_prompts, 1):
            if not (math.isfinite(weight) and abs(weight) <= MAX_WEIGHT):
                raise BadRequest(
                    f"the weight of image prompt {i} must be between -{MAX_WEIGHT:g} and {MAX_WEIGHT:g}"
                )
            load_image(data, images, name=f"image prompt {i}")  # size limits and a decodable picture
        return self
