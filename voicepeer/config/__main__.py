"""``python -m voicepeer.config --markdown``: prints docs/configuration.md."""

from __future__ import annotations

import argparse
import sys

from . import Config
from .markdown import markdown


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m voicepeer.config", description=__doc__)
    parser.add_argument("--markdown", action="store_true", help="print the options as docs/configuration.md")
    args = parser.parse_args()
    if not args.markdown:
        parser.print_help()
        return 2
    sys.stdout.write(markdown(Config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
