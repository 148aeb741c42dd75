"""Online billing and settlement (PROTOCOL.md §9) over a double-entry ledger."""
