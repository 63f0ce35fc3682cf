"""The import rules between the layers, checked on what Python really loads (a fresh interpreter each)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Everything a bot process loads to serve Discord: none of it may pull torch in (a bot process in front
# of GPU workers carries no torch), and nothing in models/ may pull discord in.
BOT_MODULES = [
    "bot.app",
    "bot.run",
    "bot.find",
    "bot.commands.imagine",
    "bot.commands.classify",
    "bot.commands.describe",
    "bot.commands.history",
    "bot.commands.settings",
    "bot.commands.status",
    "iris.service",
    "iris.service.process",
]


def _loaded(modules: list[str]) -> set[str]:
    code = "import importlib, sys\n"
    code += "".join(f"importlib.import_module({m!r})\n" for m in modules)
    code += "print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_bot_side_never_imports_torch() -> None:
    loaded = _loaded(BOT_MODULES)
    assert "discord" in loaded  # the check itself works
    assert not {m for m in loaded if m == "torch" or m.startswith(("torch.", "open_clip", "taming"))}


@pytest.mark.parametrize("module", ["models.manager", "models.engine", "models.worker"])
def test_models_never_import_discord(module: str) -> None:
    loaded = _loaded([module])
    assert "torch" in loaded
    assert not {m for m in loaded if m == "discord" or m.startswith("discord.")}
