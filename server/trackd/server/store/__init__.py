"""trackd's store: every line of SQL, with user values only as bind parameters."""
