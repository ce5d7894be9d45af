"""The KPI engine: turns a fleet's history into the bank's indicators (docs/kpis.md).

Pure functions over plain values, one module per concern:

- ``config``: the rules file (``default.yaml``, ``ATMFLEET_RULES_FILE``) and its model;
- ``labels``: available / downtime causes, and the label of each device state;
- ``timeline``: a device's labelled availability timeline from what it sent;
- ``uptime``: 开机率 (business and technical views), downtime by cause, roll-ups;
- ``substitution``: 账务性交易替代率, on-site rate, 分流率;
- ``lowyield``: 低产 / 低效 flags and the low-yield share;
- ``tail``: 剁尾巴 rankings and streaks;
- ``network``: self-service banks per outlet, deposit coverage;
- ``vendors``: fault incidents and the vendor scorecard;
- ``revenue``: fee income per device;
- ``assessment``: the monthly score per sub-branch.
"""
