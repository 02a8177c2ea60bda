"""Files and directories that appear complete or not at all.

Directories (checkpoints, datasets) are built in a temporary sibling and swapped in; JSON files
(reports, episode metadata) are written beside their target and renamed over it. A crash leaves the
previous version (or nothing) under the final name, never a half-written one.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def temp_sibling(target: str) -> str:
    """A new empty hidden directory next to ``target`` with the permissions a plain ``mkdir`` would
    give (mkdtemp's 0700 would make checkpoints and datasets unreadable to other users after the swap)."""
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-", dir=parent)
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def finish_files(directory: str) -> None:
    """Flush every file under ``directory`` to disk (the swap must never expose unwritten data) and
    give it a plain file's permissions (some writers create files 0600)."""
    mode = 0o666 & ~_umask()
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            os.chmod(path, mode)
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def swap_in(tmp: str, target: str) -> None:
    """Move the finished ``tmp`` to ``target``, replacing what was there; the old version is removed
    only once the new one is in place."""
    target = os.path.abspath(target)
    old = None
    if os.path.exists(target):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old-", dir=os.path.dirname(target))
        os.rmdir(old)
        os.rename(target, old)
    os.rename(tmp, target)
    if old:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_directory(target: str):
    """``with atomic_directory(target) as tmp:`` write the directory's files into ``tmp``; when the
    block ends they are flushed and ``tmp`` replaces ``target``; after an error ``tmp`` is removed
    and ``target`` is left as it was."""
    tmp = temp_sibling(target)
    try:
        yield tmp
        finish_files(tmp)
        swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(path: str):
    """``with atomic_file(path) as tmp:`` write the file to ``tmp``; it is then flushed and renamed
    over ``path``, so ``path`` holds the old content or the new, never a mix."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(path: str, text: str) -> None:
    """``path`` holds the old text or the new one, never a mix."""
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        f.write(text)


def write_json(path: str, data) -> None:
    """``path`` holds the old JSON or the new one, never a mix."""
    write_text(path, json.dumps(data, indent=2))
