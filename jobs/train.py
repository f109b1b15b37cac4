"""``ray job submit -- python jobs/train.py --config jobs/configs/patches.yaml [key=value ...] [--resume]``."""

import sys
from pathlib import Path

try:
    import medray  # noqa: F401
except ImportError:  # running from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from medray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
