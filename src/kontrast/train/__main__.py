"""``python -m kontrast.train RECIPE [--field value ...] [--resume latest]`` (also under torchrun).

The same flags as ``kontrast train``; only rank 0 prints.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from ..cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
