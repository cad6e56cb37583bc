"""One thin module per `encoderlab` command; each has `main(argv) -> exit code`."""

from __future__ import annotations

import argparse


def command_parser(name: str, doc: str) -> argparse.ArgumentParser:
    """The parser of `encoderlab <name>`: its module docstring's first paragraph as the description, the
    rest (examples) as the epilog."""
    return argparse.ArgumentParser(
        prog=f"encoderlab {name}",
        description=doc.split("\n\n")[0],
        epilog=doc.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
