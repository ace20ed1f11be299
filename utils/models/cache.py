"""Where converted models and random-weight folders live, and how a folder is published without races."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

CACHE_ENV = "COURSE_CACHE"          # default ~/.cache/inference-course


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "inference-course")).expanduser()


@contextmanager
def publish_folder(dest: Path, is_complete: Callable[[Path], bool]) -> Iterator[Path]:
    """Yield a private temporary folder beside `dest`; when the block succeeds, rename it to `dest`.

    A rename is atomic, so readers never see a half-written folder. If another process published a
    complete `dest` first, its copy is kept; an incomplete or stale `dest` is replaced.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        yield tmp
        if dest.exists() and not is_complete(dest):
            shutil.rmtree(dest, ignore_errors=True)    # stale cache from an older format
        try:
            os.rename(tmp, dest)
        except OSError:
            if not is_complete(dest):                  # another process won the race: use its copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
