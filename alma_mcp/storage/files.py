"""Files written whole and private: the data goes to a temporary file beside the target, which is
then renamed over it, so that a crash leaves the old file or the new one, never half of one; the
file is readable by its owner only (mkstemp's 0600), in a folder created 0700."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_whole(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically; OSError when it cannot (the old file then stands)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
