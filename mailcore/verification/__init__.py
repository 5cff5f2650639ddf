"""Reverse delivery: SOURCE ids, the GET client that pulls bodies, and the verification sweep."""
