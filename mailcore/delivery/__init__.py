"""Outbound delivery's clients, which know no database: MX routing, the SMTP client and bounces.

The queue runner that drives them from the database is a worker (mailcore.workers.outbound_queue)."""
