"""Loading the inventory into the database (upsert: re-loading a file is harmless)."""

from __future__ import annotations

import psycopg

from atmfleet.inventory import Inventory


def upsert_inventory(conn: psycopg.Connection, inventory: Inventory) -> tuple[int, int, int]:
    """Insert or update every sub-branch, branch, device and maintainer. Nothing is
    deleted: a device that left the fleet should be given a ``decommissioned`` date
    instead; a maintainer team that changed keeps its id and gets new contacts."""
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO subbranches (id, name, tier) VALUES (%s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET name = excluded.name, tier = excluded.tier",
            [(s.id, s.name, s.tier.value) for s in inventory.subbranches],
        )
        cur.executemany(
            "INSERT INTO branches (id, name, subbranch, kind, parent) VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET name = excluded.name,"
            " subbranch = excluded.subbranch, kind = excluded.kind, parent = excluded.parent",
            [(b.id, b.name, b.subbranch, b.kind.value, b.parent) for b in inventory.branches],
        )
        cur.executemany(
            "INSERT INTO devices (id, branch, type, placement, vendor, model, commissioned,"
            " decommissioned, service_window, deposit_capable, heartbeat_s)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET branch = excluded.branch, type = excluded.type,"
            " placement = excluded.placement, vendor = excluded.vendor, model = excluded.model,"
            " commissioned = excluded.commissioned, decommissioned = excluded.decommissioned,"
            " service_window = excluded.service_window,"
            " deposit_capable = excluded.deposit_capable, heartbeat_s = excluded.heartbeat_s",
            [
                (
                    d.id,
                    d.branch,
                    d.type.value,
                    d.placement.value,
                    d.vendor,
                    d.model,
                    d.commissioned,
                    d.decommissioned,
                    d.service_window,
                    d.can_deposit,
                    d.heartbeat_s,
                )
                for d in inventory.devices
            ],
        )
        if inventory.maintainers:
            # A team moving to another (vendor, region) must not collide with the row that
            # held it before the load: free the pairs being taken first.
            cur.executemany(
                "DELETE FROM maintainers WHERE vendor = %s AND region = %s AND id <> %s",
                [(m.vendor, m.region, m.id) for m in inventory.maintainers],
            )
            cur.executemany(
                "INSERT INTO maintainers (id, vendor, region, name, phone, email, wecom, manager,"
                " manager_phone, manager_email) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET vendor = excluded.vendor,"
                " region = excluded.region, name = excluded.name, phone = excluded.phone,"
                " email = excluded.email, wecom = excluded.wecom, manager = excluded.manager,"
                " manager_phone = excluded.manager_phone, manager_email = excluded.manager_email",
                [
                    (m.id, m.vendor, m.region, m.name, m.phone, m.email, m.wecom, m.manager,
                     m.manager_phone, m.manager_email)
                    for m in inventory.maintainers
                ],
            )  # fmt: skip
    return len(inventory.subbranches), len(inventory.branches), len(inventory.devices)
