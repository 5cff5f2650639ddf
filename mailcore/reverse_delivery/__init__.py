"""Reverse delivery's pieces that know no database: SOURCE ids, the envelope of a GET reply, header
alignment, the origin hosts of a sender domain and the GET client.

The SOURCE-sending client and the sweep that pulls announced bodies call the services: they are
workers (mailcore.workers.sourcing_client, mailcore.workers.pull_sweep)."""
