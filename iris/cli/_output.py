"""Writing the picture `iris imagine` makes: only to a new or regular .png file, atomically."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from iris.errors import BadFile


def _tmp_name(out: Path) -> Path:
    return out.with_name(f".{out.name}.{os.getpid()}.tmp")


def check_output(out: Path) -> None:
    """Refuse, before any work, an output path that is not a .png file Iris can create or replace.

    Only a regular file (or nothing) is ever replaced: a folder, a FIFO or a device stays as it is.
    """
    if out.suffix.lower() != ".png":
        raise BadFile(f"the output must be a .png file (Iris writes PNG), got {str(out)!r}")
    try:
        st = os.stat(out)  # follows links: a link to /dev/full is a device
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise BadFile(f"cannot use the output {out}: {e.strerror or e}") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise BadFile(f"the output {out} is a folder; name a .png file")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise BadFile(f"the output {out} is not a regular file (a pipe or a device?); name a .png file")
    folder = out.parent
    if not folder.is_dir():
        raise BadFile(f"the output folder does not exist: {folder}")
    probe = _tmp_name(out)
    try:  # the one sure test of "can I write here" (permission bits do not bind root; read-only mounts)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        os.unlink(probe)
    except OSError as e:
        raise BadFile(f"cannot write to the folder {folder}: {e.strerror or e}") from None


def _save_atomic(image: Any, out: Path) -> None:
    """Write the PNG next to `out`, then rename it over: a reader never sees half a file."""
    tmp = _tmp_name(out)
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise BadFile(f"cannot write {out}: {e.strerror or e}") from None
