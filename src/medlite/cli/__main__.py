"""`python -m medlite.cli ...`: the same as the `medlite` entry point."""

from medlite.cli import main

main()
