"""The engine: the run directory, the shard runner and the one module that talks to Ray."""
