"""Training and evaluating models: library functions the CLI, ``demo`` and tests call."""
