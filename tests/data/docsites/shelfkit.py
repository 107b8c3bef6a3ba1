"""Shelfkit: a tiny library documented by tests/load/test_formats_docsites.py with Sphinx (autodoc) and
MkDocs (mkdocstrings). Google-style docstrings: Sphinx reads them with napoleon."""
from __future__ import annotations


class Shelf:
    """A shelf of books, in the order they were put on it.

    Note:
        A shelf holds at most 40 books.
    """

    def add_book(self, title: str, pages: int = 100) -> None:
        """Put a book named *title* at the right end of the shelf.

        Args:
            title: The book's title, as printed on its spine.
            pages: How many pages it has; thicker books take more room.
        """

    def remove_book(self, title: str) -> bool:
        """Take the book named *title* off the shelf; False when it was not there."""
        return False

    def count_books(self) -> int:
        """How many books stand on the shelf."""
        return 0


def parse_isbn(text: str) -> str:
    """Normalise an ISBN-13 number by removing its hyphens.

    Examples:
        >>> parse_isbn("978-3-16-148410-0")
        '9783161484100'
    """
    return text.replace("-", "")
