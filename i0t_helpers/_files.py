"""Atomic file replacement shared by every writer of the package."""

from __future__ import annotations

import os


def _default_file_mode() -> int:
    """Return the mode a newly created file gets under the current umask (0o644 under the usual 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def replace_file(temporary, destination):
    """Move a finished temporary file onto ``destination`` atomically, with the usual file mode.

    ``tempfile.mkstemp`` creates files readable by their owner only (0o600); without
    this, data folders shared by a workshop would hold files other users cannot read.
    """
    os.chmod(temporary, _default_file_mode())
    os.replace(temporary, destination)
