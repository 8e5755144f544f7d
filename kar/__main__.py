"""``python -m kar`` is the same as the ``kar`` console script."""

from kar.cli import main

main()
