"""The web console (``atmfleet web``): fleet wall, devices, incidents, planned stops,
bulletins and KPIs for people, and a JSON API for integrations, behind logins with roles,
organisational scopes and an audit log (docs/web.md)."""
