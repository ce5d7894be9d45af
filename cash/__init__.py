"""Cash: cash-out forecasts per device and cash unit, and the replenishment plan (加钞计划).

- :mod:`cash.calendar`: which local days are pay days, holidays, the days before them.
- :mod:`cash.model`: the forecasting model on plain arrays (numpy, vectorised over devices).
- :mod:`cash.forecast`: devices' cash units + their history -> expected times, per unit.
- :mod:`cash.store`: the SQL that feeds it (one place).
- :mod:`cash.plan`: the replenishment plan (a function the CLI and the web console call).
- :mod:`cash.metrics`: the forecast as Prometheus metric families.
- :mod:`cash.cli`: ``atmfleet cash forecast|plan``.
"""
