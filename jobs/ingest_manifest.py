"""Ray job entrypoint: manifest ingest (``ray job submit --working-dir . -- python jobs/ingest_manifest.py
--config jobs/configs/ingest_ct2d.yaml [key=value ...]``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bootstrap import run_command  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_command("ingest"))
