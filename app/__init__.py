"""The composition root: the ``atmfleet`` command, the demo and its embedded services.

It depends on the parts (collector, rules, exporters, simulator, broker, ...); no part
imports it.
"""
