"""Ray job entrypoint: patch extraction (``ray job submit --working-dir . -- python jobs/extract_patches.py
--config jobs/configs/extract.yaml [key=value ...]``)."""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import medray  # noqa: F401
except ImportError:  # the working dir was uploaded without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from medray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["extract", *sys.argv[1:]]))
