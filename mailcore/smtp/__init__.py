"""The SMTP listeners (inbound MX and submission): asyncio protocols, policy in their handlers."""
