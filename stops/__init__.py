"""The planned-stop register (计划停机登记): stops of a device or a branch, registered,
approved, rejected or cancelled, every change audited (docs/stops.md).

:mod:`stops.service` is the one implementation of every action (the CLI and the web
console call it); the KPI engine reads approved stops through ``rules/queries.sql``.
"""
