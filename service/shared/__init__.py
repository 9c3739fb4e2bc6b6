"""Sharing what a daemon learned through Redis (docs/scale-out.md).

- :mod:`.shipper`: publishes the semantic outbox to Redis, removing records once
  Redis acknowledged them;
- :mod:`.consumer`: applies every other daemon's changes from the namespace streams,
  and bootstraps a namespace from the records when it has no offset (or fell
  behind the stream's retention);
- :mod:`.component`: wiring into the daemon, readiness and metrics.
"""
