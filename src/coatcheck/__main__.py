"""``python -m coatcheck`` and the ``coatcheck`` script.

The script is installed with the package, but the CLI needs the ``cli`` extra: without
it, say so in one line rather than with a traceback.
"""

from __future__ import annotations

import sys

from .exceptions import MissingDependencyError


def main() -> None:
    try:
        from .cli import main as run
    except MissingDependencyError as exc:
        sys.exit(f"coatcheck: {exc}")
    run()


if __name__ == "__main__":
    main()
