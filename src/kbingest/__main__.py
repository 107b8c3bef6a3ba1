"""`python -m kbingest`: the same as the `kbingest` command."""

from kbingest.app.cli import entry

if __name__ == "__main__":
    entry()
