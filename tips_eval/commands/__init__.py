"""One module per ``tips-eval`` subcommand, each with ``register(subparsers)``."""
