"""What every cog needs, built once by the composition root (bot/app.py)."""

from __future__ import annotations

from dataclasses import dataclass

from generation.config import Config
from generation.engine import Engine
from generation.registry import ModelRegistry
from generation.service import GenerationService
from generation.submission import Submissions
from generation.uploads import UploadStore


@dataclass(frozen=True)
class AppContext:
    config: Config
    store: object  # storage.Store
    registry: ModelRegistry
    engine: Engine
    service: GenerationService
    submissions: Submissions  # the one way a request becomes a job
    uploads: UploadStore
