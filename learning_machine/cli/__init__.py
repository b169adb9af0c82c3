"""The `lm` command: one module per command group over one shared console and settings helper (:mod:`.common`)."""
