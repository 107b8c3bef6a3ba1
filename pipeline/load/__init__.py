"""Load: walk the sources, read each document safely, and the formats that turn bytes into text."""
