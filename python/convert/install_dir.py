"""Putting a converter's finished output folder in place without a half-written moment.

A converter fills a temporary folder next to its destination; ``install_dir`` makes its files
world-readable, renames an existing destination aside, renames the new folder in and removes the
old one, so the destination path always names either the old complete folder or the new one.
Standard library only (imported by the converters run by scripts/fetch-assets).
"""

from __future__ import annotations

import os
import shutil
import tempfile


def install_dir(tmp: str, out_dir: str, tmp_prefix: str) -> None:
    """Replaces ``out_dir`` by the complete folder ``tmp`` (same parent, same file system)."""
    for name in os.listdir(tmp):
        os.chmod(os.path.join(tmp, name), 0o644)
    os.chmod(tmp, 0o755)
    parent = os.path.dirname(out_dir)
    old = None
    if os.path.lexists(out_dir):
        old = tempfile.mkdtemp(prefix=tmp_prefix + "old-", dir=parent)
        os.rename(out_dir, os.path.join(old, "x"))
    os.rename(tmp, out_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)
