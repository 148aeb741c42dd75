"""`make soak`: claims through the whole clearinghouse while a chaos driver kills
everything (issue 13, item 3), then checks that nothing was lost, decided twice
or replayed, that the audit log verifies and that the ledger balances."""
