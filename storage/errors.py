"""Errors that storage raises for callers to handle (besides SQLAlchemy's own)."""

from __future__ import annotations

from typing import Literal

CapScope = Literal["member", "guild"]


class QueueCapReached(Exception):
    """`JobRepository.create` found `count` active (queued or running) jobs for the member or
    the guild (`scope`), at or over `limit`; nothing was written."""

    def __init__(self, scope: CapScope, count: int, limit: int):
        super().__init__(f"the {scope} has {count} queued or running jobs; the limit is {limit}")
        self.scope: CapScope = scope
        self.count = count
        self.limit = limit
