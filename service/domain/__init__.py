"""The pure domain: aggregates, their events, scopes and domain errors.

Only the standard library and ``eventsourcing.domain`` are imported here. Time, ids,
digests and display hints arrive as arguments, so replay is deterministic.
"""
