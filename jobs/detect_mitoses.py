"""``ray job submit -- python jobs/detect_mitoses.py --config jobs/configs/mitosis.yaml [key=value ...]``."""

import sys

from _bootstrap import run_command

if __name__ == "__main__":
    sys.exit(run_command("mitosis", ["detect", *sys.argv[1:]]))
