"""Reliability and security: faults, hostile input, access control, soak (issue 7)."""
