"""The MQTT broker's identities, credentials and ACL, generated from the inventory."""
