"""`python -m learning_machine` is the `lm` command."""

from learning_machine.cli import main

main()
