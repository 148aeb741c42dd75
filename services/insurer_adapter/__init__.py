"""insurer_adapter: simulated insurers behind InsurerAdapterService (PROTOCOL.md §8)."""
