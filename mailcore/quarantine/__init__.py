"""The quarantine as its owners meet it: digests with signed one-click links, and the pages those links open."""
