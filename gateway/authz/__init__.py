"""The gateway's ext_authz service: verifies §3 request signatures for Envoy."""
