"""trackd's rules: validation, limits, immutability and lifecycle, above the store."""
