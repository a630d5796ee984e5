"""``python -m a2d2c`` is the ``a2d2c`` command."""

from a2d2c.cli import main

raise SystemExit(main())
