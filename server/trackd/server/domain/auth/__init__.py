"""Identity and permissions: principals, levels and the policy per call."""
