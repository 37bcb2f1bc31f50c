"""CLI command modules; each exposes ``register(subparsers)``. Keep them thin: parse, call the library."""
