"""Tamper-evident audit log primitives: RFC 6962/9162 Merkle trees, C2SP
checkpoints (signed notes, Ed25519), canonical entries and the verifier.

Pure code: no grpc, asyncpg or redis."""
