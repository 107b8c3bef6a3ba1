"""The knowledge base: its LanceDB table and location, remembered state, compaction, search indexes, search, repair, resident search, ids."""
