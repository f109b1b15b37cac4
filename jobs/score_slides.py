"""``ray job submit -- python jobs/score_slides.py --config jobs/configs/score.yaml [key=value ...]``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bootstrap import run_command  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_command("score"))
