"""Email authentication as the rest of the internet does it: SPF, DKIM, DMARC and ARC.

Each module is a set of plain functions that take a `resolver.TXTResolver` (the DNS they may ask)
and return results; nothing here touches the database. `inbound` runs every check for one
message, `results` names the verdict and writes our Authentication-Results (RFC 8601), `keys`
makes and formats DKIM keys, `signing` adds DKIM signatures and ARC seals to outgoing mail.
"""
