"""Command descriptions reach Discord in French too, through discord.py's translator."""

from __future__ import annotations


async def test_synced_commands_carry_french_descriptions(w):
    async with w.bot():
        synced = {c["name"]: c for c in w.fake.commands[w.guild.id]}
        for name in ("imagine", "classify", "status", "help", "settings", "history", "show", "describe"):
            french = synced[name].get("description_localizations") or {}
            assert french.get("fr") and french["fr"] != synced[name]["description"], name
        assert synced["imagine"]["description_localizations"]["fr"].startswith("Rêver une image")
        me = next(o for o in synced["settings"]["options"] if o["name"] == "me")
        steps = next(o for o in me["options"] if o["name"] == "steps")
        assert steps["description_localizations"]["fr"].startswith("étapes de /imagine")
        assert "name_localizations" not in synced["imagine"] or not synced["imagine"]["name_localizations"]


def test_every_translation_fits_discords_100_characters():
    from bot.i18n import CATALOG

    for catalog in CATALOG.values():
        for english, translated in catalog.items():
            assert 1 <= len(translated) <= 100, english
