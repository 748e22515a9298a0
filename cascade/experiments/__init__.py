"""Online experiments over rank profiles: A/B splits, team-draft interleaving and multileaving.

- :mod:`~cascade.experiments.config`: the ``experiments:`` key of an index config.
- :mod:`~cascade.experiments.assignment`: which experiment and arm a request belongs to (a salted hash).
- :mod:`~cascade.experiments.interleaving`: team-draft interleaving and multileaving, and click credit.
- :mod:`~cascade.experiments.events`: the event shapes (OpenSearch UBI field names) and their validation.
- :mod:`~cascade.experiments.stats`: always-valid p-values, confidence sequences, bootstrap, SRM.
- :mod:`~cascade.experiments.analysis`: a report from the aggregates the event consumer keeps.
- :mod:`~cascade.experiments.clicks`: click models (position-based, cascade) that simulate users.
- :mod:`~cascade.experiments.simulate`: simulated traffic through the real service, and power studies.

Durable storage (Redis Streams, the consumer group, aggregates) is :mod:`connectors.events`.
"""
