"""Discord-style rate limit buckets: fixed windows, X-RateLimit-* headers, 429 bodies.

discord.py reads `X-RateLimit-Remaining` / `X-RateLimit-Reset-After` and waits before it would
exceed a bucket, and retries a 429 only when it carries a `Via` header (without one it assumes a
Cloudflare ban and raises). Both behaviours are exercised here.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BucketLimit:
    limit: int
    period: float  # seconds


@dataclass(frozen=True)
class RateLimits:
    """Per-bucket limits. Defaults follow what Discord observably enforces."""

    interaction_webhook: BucketLimit = BucketLimit(5, 2.0)  # edits/follow-ups per interaction token
    channel_messages: BucketLimit = BucketLimit(5, 5.0)  # POST /channels/{c}/messages per channel
    reactions: BucketLimit = BucketLimit(1, 0.25)  # reaction PUT/DELETE per channel
    default: BucketLimit = BucketLimit(50, 1.0)  # everything else


@dataclass
class _Window:
    started: float
    used: int = 0


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    headers: dict[str, str]
    retry_after: float = 0.0


@dataclass
class InjectedRateLimit:
    """A 429 forced onto matching requests, whatever the bucket says."""

    method: str | None
    path_pattern: re.Pattern[str] | None
    remaining: int
    retry_after: float
    with_via: bool
    is_global: bool

    def matches(self, method: str, path: str) -> bool:
        if self.remaining <= 0:
            return False
        if self.method is not None and self.method != method:
            return False
        return self.path_pattern is None or self.path_pattern.search(path) is not None


@dataclass
class RateLimiter:
    limits: RateLimits
    clock_monotonic: Callable[[], float]
    _windows: dict[tuple[str, str], _Window] = field(default_factory=dict)
    injected: list[InjectedRateLimit] = field(default_factory=list)

    def check(self, bucket_name: str, major_key: str, *, now: float | None = None) -> Verdict:
        """Counts one request (arrived at `now`) against the bucket: may it proceed, with headers."""
        limit: BucketLimit = getattr(self.limits, bucket_name)
        now = self.clock_monotonic() if now is None else now
        window = self._windows.get((bucket_name, major_key))
        if window is None or now >= window.started + limit.period:
            window = _Window(started=now)
            self._windows[(bucket_name, major_key)] = window
        reset_after = max(window.started + limit.period - now, 0.0)
        bucket_hash = hashlib.sha1(bucket_name.encode()).hexdigest()[:16]
        if window.used >= limit.limit:
            return Verdict(False, _headers(limit.limit, 0, reset_after, bucket_hash), retry_after=reset_after)
        window.used += 1
        return Verdict(True, _headers(limit.limit, limit.limit - window.used, reset_after, bucket_hash))

    def take_injected(self, method: str, path: str) -> InjectedRateLimit | None:
        for injected in self.injected:
            if injected.matches(method, path):
                injected.remaining -= 1
                return injected
        return None


def round_up_ms(value: float) -> float:
    # Rounded up: a client sleeping exactly this long must land in the next window.
    return math.ceil(value * 1000) / 1000


def _seconds(value: float) -> str:
    return f"{round_up_ms(value):.3f}"


def _headers(limit: int, remaining: int, reset_after: float, bucket_hash: str) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
        "X-RateLimit-Reset-After": _seconds(reset_after),
        "X-RateLimit-Bucket": bucket_hash,
    }


def too_many_requests_headers(retry_after: float, *, with_via: bool, is_global: bool,
                              bucket_headers: dict[str, str] | None = None) -> dict[str, str]:
    headers = dict(bucket_headers or {})
    headers["X-RateLimit-Remaining"] = "0"
    headers.setdefault("X-RateLimit-Limit", "1")
    headers["X-RateLimit-Reset-After"] = _seconds(retry_after)
    headers["X-RateLimit-Reset"] = f"{time.time() + retry_after:.3f}"
    headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    headers["X-RateLimit-Scope"] = "global" if is_global else "user"
    if is_global:
        headers["X-RateLimit-Global"] = "true"
    if with_via:
        headers["Via"] = "1.1 google"
    return headers
