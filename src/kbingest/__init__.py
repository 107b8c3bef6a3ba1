"""kbingest: ingest document folders into vector knowledge bases, and watch and steer every phase.

The one top-level import name of the project. Its sub-packages live in the repository's top-level
folders (app/, pipeline/, widgets/) and are installed here by pyproject.toml's package-dir mapping:
kbingest.pipeline (the engine, never imports Textual), kbingest.app (CLI, dashboard), kbingest.widgets.
"""

__version__ = "0.2.0"
