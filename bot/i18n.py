"""Command descriptions in more languages, through discord.py's translator (set on the command tree).

Discord shows a command's `description_localizations` to people whose client uses that locale. The
catalog is keyed by the English text as written in the code, so a description changed in English falls
back to English until its translation is updated. Names stay English: they are what people type.
"""

from __future__ import annotations

import discord
from discord import app_commands

Location = app_commands.TranslationContextLocation
TRANSLATED = (Location.command_description, Location.group_description, Location.parameter_description)

# locale → English text → translation
CATALOG: dict[discord.Locale, dict[str, str]] = {
    discord.Locale.french: {
        # commands
        "Label an image with CLIP against labels you give": (
            "Étiqueter une image avec CLIP parmi les étiquettes que vous donnez"
        ),
        "Dream up a picture from a prompt (VQGAN+CLIP)": (
            "Rêver une image à partir d'une consigne (VQGAN+CLIP)"
        ),
        "Queue length, your jobs, device and models": "File d'attente, vos tâches, matériel et modèles",
        "Find images posted here by describing them": "Retrouver les images postées ici en les décrivant",
        "Keep a channel out of /find (or let it back in)": "Exclure un salon de /find (ou l'y réintégrer)",
        "How to use Iris, and the limits on this server": (
            "Comment utiliser Iris, et les limites de ce serveur"
        ),
        "Your defaults, and this server's settings": "Vos préférences, et les réglages de ce serveur",
        "Your defaults for /imagine and /classify (only you see them)": (
            "Vos préférences pour /imagine et /classify (vous seul les voyez)"
        ),
        "This server's settings (for members with Manage Server)": (
            "Les réglages de ce serveur (pour les membres qui peuvent « Gérer le serveur »)"
        ),
        "Your recent pictures: prompt, seed, state, link": (
            "Vos images récentes : consigne, graine, état, lien"
        ),
        "Post one of your past pictures again, with its buttons": (
            "Reposter une de vos images passées, avec ses boutons"
        ),
        "Tell what an image shows, and a prompt to draw it": (
            "Dire ce que montre une image, et une consigne pour la dessiner"
        ),
        # options
        'what to draw; weighted parts with "|": "a watercolor fox:1 | blurry:-0.5"': (
            'quoi dessiner ; parties pondérées avec « | » : "a watercolor fox:1 | blurry:-0.5"'
        ),
        "4: four variations (different seeds) in one 2×2 grid, with U1–U4 and V1–V4 buttons": (
            "4 : quatre variantes (graines différentes) dans une grille 2×2, avec les boutons U1–U4 et V1–V4"
        ),
        "the image to describe": "l'image à décrire",
        "how many phrases to show": "combien de phrases afficher",
        "show the answer to everyone (default: only you)": (
            "montrer la réponse à tous (par défaut : à vous seul)"
        ),
        "the image to classify": "l'image à classer",
        "how many labels to show": "combien d'étiquettes afficher",
        "optimisation steps (more: slower, more detailed)": (
            "étapes d'optimisation (plus : plus lent, plus détaillé)"
        ),
        "random seed (same seed and settings: same picture)": (
            "graine aléatoire (même graine et réglages : même image)"
        ),
        "picture shape": "forme de l'image",
        "start from this picture instead of noise": "partir de cette image plutôt que du bruit",
        "vqgan (default) or pixels": "vqgan (par défaut) ou pixels",
        "how many of your latest jobs to list (1-25)": "combien de vos dernières tâches lister (1-25)",
        "the job id, as /history lists it": "l'identifiant de la tâche, tel que /history l'affiche",
        "/imagine steps when you don't say": "étapes de /imagine quand vous ne les précisez pas",
        "/imagine picture shape when you don't say": (
            "forme d'image de /imagine quand vous ne la précisez pas"
        ),
        "/imagine generator when you don't say": "générateur de /imagine quand vous ne le précisez pas",
        "true: /classify answers only you": "vrai : /classify ne répond qu'à vous",
        "true: forget all your defaults": "vrai : oublier toutes vos préférences",
    },
}


class Translator(app_commands.Translator):
    """Looks descriptions up in CATALOG; anything else (names, choices, other locales) stays English."""

    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContextTypes,
    ) -> str | None:
        if context.location not in TRANSLATED:
            return None
        return CATALOG.get(locale, {}).get(string.message)
