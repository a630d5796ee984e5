"""The package's logger: ``logging.getLogger("a2d2c")``.

As a library a2d2c is quiet: the logger has only a ``NullHandler`` (the logging HOWTO's
rule for libraries), so ``fit()`` prints nothing unless the application asks, e.g. with
``logging.basicConfig(level=logging.INFO)``. The ``a2d2c`` command installs a handler
that writes INFO and above to standard output, one message per line.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["install_cli_handler", "logger"]

logger = logging.getLogger("a2d2c")
if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
    logger.addHandler(logging.NullHandler())


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time (pytest's capture, redirection)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        self.flush()


def install_cli_handler(level: int = logging.INFO) -> None:
    """Send the package's messages to stdout (idempotent): what the CLI does first."""
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # an application's root handler would print each line twice
