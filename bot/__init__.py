"""Iris's Discord side (discord.py). Never imports torch: models are reached through the inference manager."""
