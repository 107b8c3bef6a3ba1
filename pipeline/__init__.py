"""kbingest engine: loading -> chunking -> embedding -> indexing. Never imports Textual."""
