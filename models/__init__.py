"""Iris's ML engine: CLIP, VQGAN, generation, weights, the toy world. Never imports discord.

Submodules import torch; this package's __init__ does not, so `models.toy.world` and the plain helpers stay
cheap to import.
"""
