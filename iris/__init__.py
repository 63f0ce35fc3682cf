"""Iris: the application core shared by the bot and the engine (config, errors, images, index, CLI).

Nothing here imports torch or discord.
"""

__version__ = "0.1.0"
