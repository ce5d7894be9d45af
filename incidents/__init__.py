"""Incidents (故障工单): the engine that opens them, their lifecycle, SLA timers and
escalations (docs/incidents.md)."""
