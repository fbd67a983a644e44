"""Where a run's files and its input live: a local (or mounted) path, or an object store."""
