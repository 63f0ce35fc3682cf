"""Device and precision choice: fp32 on the CPU, fp16/bf16 autocast on a GPU."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch

from iris.config import Automatic, ImagineConfig
from iris.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """ "auto" → cuda if available, else cpu; anything else as given (checked to exist)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {name!r} was asked for, but torch sees no CUDA GPU (use device: auto or cpu)"
        )
    return dev


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype for a precision setting ("auto": fp16 on cuda, fp32 elsewhere)."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in dtypes:
        raise ConfigError(f"precision {precision!r} is not one of auto, {', '.join(dtypes)}")
    if device.type == "cpu" and precision == "fp16":
        raise ConfigError("precision fp16 needs a GPU; use fp32 (or bf16) on the CPU")
    return dtypes[precision]


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Mixed precision where asked for; a no-op for fp32."""
    if dtype == torch.float32:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield


# The references' defaults (nerdyrodent/VQGAN-CLIP): 512 px on a GPU with 8 GB or more, ~300 px below,
# 256 px without a GPU; 500 steps on a GPU, 300 on the CPU where a step costs seconds.
GPU_MEMORY_FOR_512 = 8 * 10**9  # bytes; a "8 GB" card reports a little under 8 GiB


def auto_imagine_size_steps(device: torch.device) -> tuple[int, int]:
    """(side in px, steps) for `imagine.width/height/steps: auto` on this device."""
    if device.type == "cuda":
        memory = torch.cuda.get_device_properties(device).total_memory
        return (512, 500) if memory >= GPU_MEMORY_FOR_512 else (304, 500)
    return 256, 300


def resolve_imagine(im: ImagineConfig, device: torch.device) -> ImagineConfig:
    """The imagine section with every `auto` replaced by the device's value, bounded by the maxima."""
    side, steps = auto_imagine_size_steps(device)
    side = min(side, im.max_side)

    def pick(value: int, auto: int) -> int:
        return auto if isinstance(value, Automatic) else value

    return dataclasses.replace(
        im,
        width=pick(im.width, side),
        height=pick(im.height, side),
        steps=pick(im.steps, min(steps, im.max_steps)),
    )
