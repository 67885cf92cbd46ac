"""Attacks replayed against the running code: each test is a finding of an audit, and asserts
the refusal (issue 10)."""
