"""The import rules between the layers, checked on what Python really loads (a fresh interpreter each)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

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
    "models.connect",
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


def _imports(path: Path) -> set[str]:
    """Every module a file names in an import statement, at any depth (lazy imports count too)."""
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return out


# What each layer may never name: the core sits below the engine and the bot (the command line, which
# wires every layer together, sits above them all); the engine never reaches Discord.
FORBIDDEN = {
    "iris": ("models", "bot", "torch", "discord", "open_clip", "taming"),
    "models": ("bot", "discord"),
    "bot": ("torch", "open_clip", "taming"),
}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_layer_names_one_above_it(layer: str) -> None:
    root = Path(__file__).resolve().parents[1]
    bad = []
    for path in sorted((root / layer).rglob("*.py")):
        if path.relative_to(root).parts[:2] == ("iris", "cli"):
            continue
        for name in _imports(path):
            if name.split(".")[0] in FORBIDDEN[layer]:
                bad.append(f"{path.relative_to(root)}: {name}")
    assert not bad
