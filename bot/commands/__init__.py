"""One extension per command; each module ends in `async def setup(bot)`."""
