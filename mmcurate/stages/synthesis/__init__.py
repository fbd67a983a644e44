"""The synthesis stage as a small package: the stage (`stage.py`), its prompt templates, its
response cache and its instruction records."""
