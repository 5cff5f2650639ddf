"""Spam checking with SpamAssassin's spamd, strict for unverified mail and lenient for verified mail."""
