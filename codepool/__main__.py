"""`python -m codepool` runs the CLI."""

from codepool.cli.app import main

main()
