"""Notifications: channels, the durable outbox, the Alertmanager receiver, bulletins."""
