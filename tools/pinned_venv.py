"""Run a tools/ script inside the shared reference venv with pinned packages.

The PyTorch-based fixture generators and benchmarks share one venv outside the repo
(~/.cache/dino-stream/venv-fixtures; torch's wheel is ~4 GB). `bootstrap` creates it if
needed, installs the pins that are missing or different, and re-executes the calling script
with the venv's interpreter. Standard library only.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

VENV = os.path.expanduser("~/.cache/dino-stream/venv-fixtures")


def _installed_versions(python: str, names: list[str]) -> dict:
    code = ("import importlib.metadata as m, json\n"
            "out = {}\n"
            f"for n in {sorted(names)!r}:\n"
            "    try: out[n] = m.version(n).split('+')[0]\n"
            "    except Exception: out[n] = None\n"
            "print(json.dumps(out))")
    res = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


def bootstrap(script: str, pinned: dict[str, str], argv: list[str]) -> None:
    """Re-exec `script` inside VENV (created and filled with `pinned` if needed), unless
    --no-venv is given or we already run there."""
    if "--no-venv" in argv or os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        print(f"creating venv {VENV}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    have = _installed_versions(py, list(pinned))
    if any(have.get(k) != v for k, v in pinned.items()):
        print(f"installing pinned packages into {VENV} (have {have})", file=sys.stderr)
        subprocess.run([py, "-m", "pip", "install", "--quiet"]
                       + [f"{k}=={v}" for k, v in pinned.items()], check=True)
    os.execv(py, [py, os.path.abspath(script)] + argv)
