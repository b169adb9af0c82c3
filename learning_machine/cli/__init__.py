"""The `lm` command: one module per command group over one shared console and settings helper (:mod:`.common`)."""

from __future__ import annotations

import sys


def main() -> None:
    """`lm` (the console script): the command line of :mod:`.app`, or one line naming the extra to install when
    this install lacks it (the base install is the REST client only; docs/install.md)."""
    try:
        from learning_machine.cli.app import main as run
    except ModuleNotFoundError as exc:
        if (exc.name or "learning_machine").startswith("learning_machine"):
            raise
        sys.exit(f"lm needs the platform extra, which this install lacks (no module {exc.name!r}): "
                 "pip install 'learning-machine[platform]'")
    run()
