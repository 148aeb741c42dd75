"""insurer_adapter: the hub's outbound side (docs/protocol.md §10): takes claims
from the router, pushes them to insurers by gRPC or webhook, reports what
happened to the router, and serves the operators' AdminService (§11)."""
