"""The toy world and the small models trained on it (shipped, so everything runs offline)."""

from pathlib import Path

TOY_DIR = Path(__file__).resolve().parent
TOY_CLIP_NAME = "iris-toy-clip"  # open_clip architecture name, from iris-toy-clip.json beside this file
TOY_CLIP_WEIGHTS = TOY_DIR / "iris-toy-clip.safetensors"
TOY_VQGAN_CONFIG = TOY_DIR / "iris-toy-vqgan.yaml"
TOY_VQGAN_WEIGHTS = TOY_DIR / "iris-toy-vqgan.safetensors"
