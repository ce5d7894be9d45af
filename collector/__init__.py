"""The collector: MQTT in, validated rows out, acknowledged only once committed.

:mod:`collector.decode` turns one MQTT message into a row or a dead letter (pure);
:mod:`collector.buffer` holds received messages until their batch is acknowledged
(bounded); :mod:`collector.service` runs the MQTT client and the writer loop;
:mod:`collector.stats` keeps the collector's own metrics on a registry passed in.
"""
