"""Outbound delivery: the queue runner, MX routing, the SMTP client and bounces."""
