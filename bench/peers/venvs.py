"""Each peer's own virtualenv under build/bench-venvs/<peer>, installed from requirements/<peer>.txt on first
use and reinstalled only when its requirements change (their hash is kept beside the interpreter)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENVS = ROOT / "build" / "bench-venvs"
REQUIREMENTS = Path(__file__).resolve().parent / "requirements"
_MARKER = ".requirements.sha256"


def requirements_digest(peer: str) -> str:
    """The hash of the peer's requirements file and the shared one it includes."""
    digest = hashlib.sha256()
    for name in ("common.txt", f"{peer}.txt"):
        digest.update((REQUIREMENTS / name).read_bytes())
    return digest.hexdigest()


def python(peer: str) -> Path:
    return VENVS / peer / "bin" / "python"


def installed(peer: str) -> bool:
    """True when the venv exists and was installed from the current requirements."""
    marker = VENVS / peer / _MARKER
    return marker.exists() and marker.read_text().strip() == requirements_digest(peer)


def ensure(peer: str, log: Path | None = None) -> Path:
    """The peer venv's interpreter, installing the venv first when missing or out of date."""
    if installed(peer):
        return python(peer)
    venv = VENVS / peer
    shutil.rmtree(venv, ignore_errors=True)
    started = time.monotonic()
    print(f"installing the {peer} peer into {venv} (once)", file=sys.stderr, flush=True)
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, stdout=out, stderr=out)
        pip = [str(python(peer)), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS / f"{peer}.txt")]
        subprocess.run(pip, check=True, stdout=out, stderr=out)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(venv, ignore_errors=True)
        raise RuntimeError(f"installing the {peer} peer failed ({exc}); see {log or 'pip'}") from None
    finally:
        if log:
            out.close()
    (venv / _MARKER).write_text(requirements_digest(peer))
    size_mb = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file()) / 2**20
    print(f"{peer} peer installed in {time.monotonic() - started:.0f} s, {size_mb:.0f} MB", file=sys.stderr)
    return python(peer)
