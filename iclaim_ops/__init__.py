"""Operator commands and the dev stack: the top floor of the hub distribution."""
