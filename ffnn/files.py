"""Output folders written all or nothing: a report, a study's outputs."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

from .errors import UserError, fault_line, no_space


def write_all(out: Path, files: dict[str, str | bytes], what: str = "report",
              error: type[Exception] = UserError) -> list[Path]:
    """All of ``files`` (name -> content) into the folder ``out`` or none of them.

    Each is written whole into a temporary folder beside ``out`` (where a full disk or a permission stops
    it), then moved into place: a rename, which needs no space. What ``out`` held stays as it was until
    then; its other files are never touched; a folder made here and left empty is removed. A failure is
    ``error`` with one line that names the file and why.
    """
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise error(f"cannot write the {what} into {out}: {fault_line(e)}") from None
    try:
        for name, content in files.items():
            try:
                if isinstance(content, bytes):
                    (tmp / name).write_bytes(content)
                else:
                    (tmp / name).write_text(content, encoding="utf-8")
            except OSError as e:
                line = fault_line(no_space(out / name)) if e.errno == errno.ENOSPC else \
                    f"cannot write {out / name}: {fault_line(e)}"
                if created:
                    with contextlib.suppress(OSError):
                        out.rmdir()
                raise error(f"{line}; the {what} in {out} is left as it was") from None
        for name in files:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [out / name for name in files]
