"""Numeric building blocks with no I/O: banded Hamming search, grouping, k-means and embedding search."""
