"""Shared start of every ``jobs/<step>.py`` entrypoint: make medray importable, run one subcommand.

``ray job submit --working-dir . -- python jobs/<step>.py ...`` runs the script from the uploaded
checkout, where medray may not be installed: then ``platform/`` (beside ``jobs/``) goes on sys.path.
An installed medray (the container image, ``make setup``) is used as is.
"""

from __future__ import annotations

import sys
from pathlib import Path

PLATFORM_DIR = Path(__file__).resolve().parents[1] / "platform"


def ensure_medray_importable() -> None:
    """Put the checkout's ``platform/`` first on sys.path when ``import medray`` fails."""
    try:
        import medray  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(PLATFORM_DIR))


def run_command(command: str, argv: list[str] | None = None) -> int:
    """``medray <command> <argv>`` (default argv: this script's arguments); returns the exit code."""
    ensure_medray_importable()
    from medray.cli import main

    return main([command, *(sys.argv[1:] if argv is None else argv)])
