"""``python -m projectionist.cli``."""

from . import main

main()
