"""The dedup stage as a small package: the stage (`stage.py`), the signals it decides on and its
one-task decisions (`signals.py`), and the same decisions as a partitioned dataflow (`flow.py`)."""
