# The Sphinx site of tests/load/test_formats_docsites.py: autodoc of ../shelfkit.py (no network: no
# intersphinx, the default theme).
import os
import sys

sys.path.insert(0, os.path.abspath(".."))
project = "Shelfkit"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
html_theme = "alabaster"
