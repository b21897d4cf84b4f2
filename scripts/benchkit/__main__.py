"""``python -m benchkit MODE ...``: see cli.py."""
import sys

from benchkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
