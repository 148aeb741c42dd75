"""iClaim participant portal."""
