"""trackd's benchmarks (`make bench`): figures, not pass/fail."""
