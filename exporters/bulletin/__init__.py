"""Bulletins (通报): the daily uptime and transaction bulletin, the monthly and quarterly
assessments. One data model (:mod:`.model`, built by :mod:`.build` from the KPI feed and
core), one renderer per format (:mod:`.render`), written atomically (:mod:`.output`)."""
