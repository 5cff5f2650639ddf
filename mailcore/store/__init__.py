"""The durable message-body store: `put` returns only once the bytes are on stable storage."""

from mailcore.store.bodies import MessageStore, StoredBody, message_store

__all__ = ["MessageStore", "StoredBody", "message_store"]
