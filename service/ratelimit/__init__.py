"""Rate limits and quotas: the GCRA engine and its counters (service.ratelimit.local: shared by
the workers of one instance; service.ratelimit.redis: shared by every instance, falling back to
the local ones while Redis is unreachable). ``Limiter`` is what a verdict calls."""

from service.ratelimit.engine import RATE_LIMITED, Decision, Limiter, LimitSet

__all__ = ["RATE_LIMITED", "Decision", "LimitSet", "Limiter"]
