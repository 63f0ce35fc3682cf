"""Named recipes of views ("profiles"): how each step's cutouts are cut and augmented.

- `iris`: crops down to 45 % of the side, flips, ±15° rotation, mild brightness/contrast jitter, noise.
  Tuned on the toy world (its CLIP was trained on these very views); the toy config uses it.
- `classic`: the recipe of the reference VQGAN+CLIP scripts (nerdyrodent/VQGAN-CLIP's default "latest"
  cutouts with its default augments Af, Pe, Ji, Er): crops never smaller than CLIP's input (sizes shaped by
  `cut_pow`), downscaled by mixing average and max pooling half and half, then with probability 0.7 each a
  random affine (±15°, translate 0.1, shear 5°, black outside), a perspective warp (0.7), a colour jitter
  (brightness, contrast, saturation, hue 0.1) and one erased rectangle for the batch; noise up to 0.1.
- `none`: plain crops (down to CLIP's input size), prefiltered, nothing else: the original notebook.
"""

from __future__ import annotations

from iris.errors import BadRequest
from iris.request import PROFILES as PROFILE_NAMES
from models.cutouts import CutoutConfig

PROFILES: dict[str, CutoutConfig] = {
    "iris": CutoutConfig(),
    "classic": CutoutConfig(
        min_scale=None,
        cut_pow=1.0,
        pool=0.5,
        flip=False,
        affine_p=0.7,
        max_rotate=15.0,
        translate=0.1,
        shear=5.0,
        perspective=0.7,
        perspective_p=0.7,
        padding="zeros",
        jitter_p=0.7,
        brightness=0.1,
        contrast=0.1,
        saturation=0.1,
        hue=0.1,
        erase_p=0.7,
        erase_area=(0.1, 0.4),
        noise=0.1,
    ),
    "none": CutoutConfig(
        min_scale=None,
        flip=False,
        affine_p=0.0,
        max_rotate=0.0,
        jitter_p=0.0,
        brightness=0.0,
        contrast=0.0,
        noise=0.0,
    ),
}


assert tuple(PROFILES) == PROFILE_NAMES, "iris/request.py validates requests against the same names"


def profile(name: str) -> CutoutConfig:
    """The cutout recipe of a profile name; BadRequest naming the choices for an unknown one."""
    try:
        return PROFILES[name]
    except KeyError:
        raise BadRequest(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}") from None
