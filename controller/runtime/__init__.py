"""The site runtime (owned by the lead)."""
