"""The photos a command line names: files as given, directories searched recursively, globs expanded."""

from __future__ import annotations

import glob
import mimetypes
from collections.abc import Iterable
from pathlib import Path

from services.cli.outcomes import UsageError

# What the service classifies; other files found in a directory or by a glob are skipped, so that a
# README or a .txt next to the photos is not sent only to be refused.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".avif", ".heic", ".heif", ".gif", ".bmp", ".tif", ".tiff"}
)
GLOB_CHARS = frozenset("*?[")


class PhotoNotFound(UsageError):
    """A named file, directory or glob that gives no photo."""


def _is_photo(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _hidden(path: Path, root: Path) -> bool:
    # dot-files next to photos are mostly metadata (macOS "._cat.jpg", .thumbnails/): never photos to send
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _in_directory(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if _is_photo(p) and not _hidden(p, root))


def _matches(pattern: str) -> list[Path]:
    found: list[Path] = []
    for match in sorted(glob.glob(pattern, recursive=True)):
        path = Path(match)
        if path.is_dir():
            found += _in_directory(path)
        elif _is_photo(path):
            found.append(path)
    return found


def expand(names: Iterable[str]) -> tuple[list[Path], bool]:
    """The photos to send, in order and without repeats, and whether a directory or glob named any.

    :raise PhotoNotFound: when a name is neither a file, a directory with photos, nor a glob matching any.
    """
    photos: dict[Path, None] = {}  # an ordered set: a photo named twice is sent once
    searched = False
    for name in names:
        path = Path(name)
        if path.is_dir():
            found, searched = _in_directory(path), True
            if not found:
                raise PhotoNotFound(f"no photo (JPEG, PNG, WebP, HEIC, ...) in the directory {name}")
        elif path.exists():
            found = [path]
        elif GLOB_CHARS & set(name):
            found, searched = _matches(name), True
            if not found:
                raise PhotoNotFound(f"no photo (JPEG, PNG, WebP, HEIC, ...) matches {name}")
        else:
            raise PhotoNotFound(f"no such file or directory: {name}")
        photos |= dict.fromkeys(found)
    return list(photos), searched


def content_type(path: Path) -> str:
    """The content type to declare for a photo (the service sniffs the bytes anyway)."""
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"
