"""Label lists for zero-shot classification: parsing what people type, and the one label check."""

from __future__ import annotations

from iris.errors import BadRequest


def parse_labels(text: str) -> list[str]:
    """Comma-separated labels; double quotes keep commas: `cat, "salt, pepper", dog`."""
    labels: list[str] = []
    buf: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            labels.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    labels.append("".join(buf))
    return list(dict.fromkeys(lb.strip() for lb in labels if lb.strip()))


def check_labels(labels: list[str], max_labels: int = 50, max_chars: int = 100) -> list[str]:
    """The one label check (CLI, bot and engine): non-empty, not too many, not too long."""
    labels = list(dict.fromkeys(lb.strip() for lb in labels if lb.strip()))
    if not labels:
        raise BadRequest('give at least one label, e.g. "cat, dog, a person"')
    if len(labels) > max_labels:
        raise BadRequest(f"{len(labels)} labels given; the limit is {max_labels}")
    long = [lb for lb in labels if len(lb) > max_chars]
    if long:
        raise BadRequest(f"labels are limited to {max_chars} characters; {long[0][:40]!r}... is longer")
    return labels
