"""trackd."""
