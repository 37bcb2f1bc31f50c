"""CLI command modules, one per ``facerco`` subcommand; each exposes ``register(subparsers)``.

They parse arguments, call the library and print; logic lives in the packages (``prep``, ``data``, ``train``,
``distill``, ``route``, ``eval``, ``export``, ``models``).
"""
