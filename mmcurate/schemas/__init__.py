"""Config models and the Arrow schemas of shards, ledger and exports: every column is named here."""
