"""`python -m app` from a checkout (contracts/CLI.md); installed, the name is `python -m kbingest`."""

from kbingest.app.cli import entry

if __name__ == "__main__":
    entry()
