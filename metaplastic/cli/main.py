"""Command-line entry point (placeholder until the CLI module is written)."""


def main() -> None:
    raise SystemExit("not yet")
