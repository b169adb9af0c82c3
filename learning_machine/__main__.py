"""`python -m learning_machine` is the `lm` command."""

from learning_machine.cli.app import main

main()
