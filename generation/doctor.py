"""`easel doctor`: a short report on what easel needs, one line per check, "ok" or "problem".

Versions, the device (and for CUDA the GPU and its memory), the config file and its problems, the
models found and skipped, the data folder, Discord's API and the token, the broker. It reads the
config itself and tolerates a broken one (the problems are reported, the rest runs on what could be
read), never hashes model files, never writes anything but a probe file it deletes, and bounds
every network check with a timeout, so it neither hangs nor crashes on a missing folder. Exit code:
0 when nothing is a problem, 1 otherwise.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
import tempfile
import threading
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

DISCORD_GATEWAY_URL = "https://discord.com/api/v10/gateway"
DISCORD_TIMEOUT_S = 3.0
BROKER_TIMEOUT_S = 2.0
_MAX_LISTED = 8  # skipped files listed per kind; the rest are counted


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    problems: int = 0

    def ok(self, text: str) -> None:
        self.lines.append(f"ok:      {text}")

    def problem(self, text: str) -> None:
        self.problems += 1
        self.lines.append(f"problem: {text}")

    def detail(self, text: str) -> None:
        self.lines.append(f"           {text}")


def _bounded(check: Callable[[], str], timeout_s: float) -> tuple[bool, str]:
    """Run `check` in a daemon thread (a DNS lookup ignores socket timeouts); (True, its text),
    (False, the error) or (False, "no answer within N s")."""
    result: list[tuple[bool, str]] = []

    def run() -> None:
        try:
            result.append((True, check()))
        except Exception as exc:  # reported, never raised
            result.append((False, " ".join(str(exc).split()) or type(exc).__name__))

    thread = threading.Thread(target=run, name="easel-doctor-check", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return result[0] if result else (False, f"no answer within {timeout_s:g} s")


def _start(check: Callable[[], str], timeout_s: float) -> Callable[[], tuple[bool, str]]:
    """Start a bounded check now, collect it later (the network checks run while the models are scanned)."""
    box: list[tuple[bool, str]] = []
    thread = threading.Thread(target=lambda: box.append(_bounded(check, timeout_s)), daemon=True)
    thread.start()

    def collect() -> tuple[bool, str]:
        thread.join(timeout_s + 1)
        return box[0] if box else (False, f"no answer within {timeout_s:g} s")

    return collect


def _discord_check(url: str, timeout_s: float) -> Callable[[], str]:
    def check() -> str:
        request = urllib.request.Request(url, headers={"User-Agent": "easel doctor"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code >= 500 or exc.code == 429:
                raise RuntimeError(f"Discord answered HTTP {exc.code} (https://discordstatus.com)") from None
            return f"HTTP {exc.code}"  # it answered: the network path works
        except urllib.error.URLError as exc:
            reason = exc.reason
            text = getattr(reason, "strerror", None) or str(reason)
            if isinstance(reason, TimeoutError):
                text = f"no answer within {timeout_s:g} s"
            raise RuntimeError(text) from None

    return check


def _redacted(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))


def _broker_check(url: str, timeout_s: float) -> Callable[[], str]:
    def check() -> str:
        try:
            import redis
        except ImportError:
            raise RuntimeError("the redis package is not installed (pip install 'easel-bot[workers]')") from None
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        try:
            client.ping()
        finally:
            client.close()
        return "answers PING"

    return check


def _tolerant_config(path: Path | None, env: Mapping[str, str], report: Report):
    """The config as `easel` would load it; on a ConfigError, a problem line and the best that can
    be read (the file's [paths] and the environment, else the built-in defaults)."""
    from .config import Config, ConfigError, PathsConfig, config_from_mapping, load_config

    explicit = path is not None
    path = Path(path if explicit else env.get("EASEL_CONFIG", "config.toml"))
    try:
        config = load_config(path if explicit or path.exists() else None, env)
    except ConfigError as exc:
        report.problem(f"config {path}: {exc}")
    else:
        where = str(path.resolve()) if path.exists() else f"built-in defaults (no file at {path.resolve()})"
        report.ok(f"config: {where}")
        return config
    paths: dict = {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        if isinstance(data.get("paths"), dict):
            paths = {key: value for key, value in data["paths"].items()
                     if key in ("data_dir", "models_dir") and isinstance(value, str)}
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        pass
    config = None
    if paths:
        try:
            config = config_from_mapping({"paths": paths}, env)
        except ConfigError:
            pass
    if config is None:
        try:
            config = config_from_mapping({}, env)
        except ConfigError as exc:  # the environment's own problems (EASEL_DEVICE, EASEL_BROKER_URL)
            if str(exc) not in report.lines[-1]:
                report.problem(f"environment: {exc}")
            config = Config(paths=PathsConfig(data_dir=env.get("EASEL_DATA_DIR") or PathsConfig.data_dir,
                                              models_dir=env.get("EASEL_MODELS_DIR") or PathsConfig.models_dir))
    report.detail(f"(the checks below use data folder {config.data_dir.resolve()} and models folder "
                  f"{config.models_dir.resolve()})")
    return config


def _versions(report: Report) -> None:
    report.ok(f"python {platform.python_version()} ({sys.executable})")
    found, missing = [], []
    for package in ("torch", "diffusers", "transformers", "huggingface_hub", "discord.py"):
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            missing.append(package)
    if found:
        report.ok(", ".join(found))
    if missing:
        report.problem(f"not installed: {', '.join(missing)} (make run installs everything)")


def _device(config, report: Report) -> None:
    try:
        import torch

        from .pipelines import DeviceSpec

        spec = DeviceSpec.choose(config.device.device)
    except Exception as exc:  # ModelLoadError, or a broken torch install
        report.problem(f"device {config.device.device}: {exc}")
        return
    text = f"device: {spec.device} ({str(spec.dtype).removeprefix('torch.')})"
    if spec.device.startswith("cuda"):
        try:
            index = torch.device(spec.device).index
            index = torch.cuda.current_device() if index is None else index
            free, total = torch.cuda.mem_get_info(index)
            text += (f", {torch.cuda.get_device_name(index)}, {total / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
                     f" (CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s))")
        except Exception as exc:
            report.problem(f"{text}: cannot read the GPU: {exc}")
            return
    elif spec.device == "cpu" and config.device.device == "auto":
        text += "; no GPU found, so images take minutes each"
    report.ok(text)


class _NoHashing:
    """A hash cache that knows every file: the doctor counts models, it does not read 4 GB files."""

    def get(self, path, size, mtime_ns) -> str:
        return "0" * 64

    def put(self, path, size, mtime_ns, sha256) -> None:
        pass


def _listed(report: Report, items: list[tuple[str, str]]) -> None:
    for name, reason in items[:_MAX_LISTED]:
        report.detail(f"skipped {name}: {reason}")
    if len(items) > _MAX_LISTED:
        report.detail(f"... and {len(items) - _MAX_LISTED} more (`easel models` lists them all)")


def _models(config, env: Mapping[str, str], report: Report) -> None:
    from .errors import ModelNotFound
    from .first_run import hub_offline
    from .registry import ModelRegistry

    registry = ModelRegistry.from_config(config, hash_cache=_NoHashing())
    try:
        snapshot = registry.refresh()
    except Exception as exc:
        report.problem(f"models in {config.models_dir}: cannot be scanned: {exc}")
        return
    folder = config.checkpoints_dir.resolve()
    skipped = [(Path(item.path).name, item.reason) for item in snapshot.skipped]
    if snapshot.checkpoints:
        try:
            default = f"default {registry.default_name()}"
        except ModelNotFound as exc:
            default = None
            report.problem(f"checkpoints: {len(snapshot.checkpoints)} in {folder}, {len(skipped)} skipped; {exc}")
        if default:
            report.ok(f"checkpoints: {len(snapshot.checkpoints)} in {folder} ({default}), {len(skipped)} skipped")
    else:
        models = config.models
        will_download = (models.download_default and not models.default_checkpoint and not skipped
                         and not hub_offline(env))
        if will_download:
            report.ok(f"checkpoints: none in {folder} yet; `easel run` downloads {models.default_file} from "
                      f"{models.default_repo} first ([models] download_default)")
        elif models.default_checkpoint and models.allow_hub_checkpoints and "/" in models.default_checkpoint:
            report.ok(f"checkpoints: none in {folder}; the default is the hub model {models.default_checkpoint}")
        else:
            report.problem(f"checkpoints: none usable in {folder}, {len(skipped)} skipped; put a .safetensors "
                           f"checkpoint there or run `easel make-test-model {folder / 'tiny'}`")
    _listed(report, skipped)
    for kind, items, where in (
        ("embeddings", snapshot.embeddings, config.embeddings_dir.resolve()),
        ("LoRAs", snapshot.loras, config.loras_dir.resolve()),
    ):
        unusable = [(getattr(item, "trigger", None) or item.name, item.skip_reason) for item in items
                    if item.skip_reason]
        report.ok(f"{kind}: {len(items) - len(unusable)} in {where}, {len(unusable)} skipped")
        _listed(report, unusable)
    upscalers = [info for info in snapshot.upscalers if info.path is not None]
    unusable = [(info.name, info.skip_reason) for info in upscalers if not info.usable]
    report.ok(f"upscalers: {len(upscalers) - len(unusable)} in {config.upscalers_dir.resolve()} (and Lanczos, Nearest), "
              f"{len(unusable)} skipped")
    _listed(report, unusable)


def _data_folder(config, report: Report) -> None:
    folder = config.data_dir.resolve()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        report.problem(f"data folder {folder}: {existing} is not a folder")
        return
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".easel-doctor-"):
            pass
    except OSError as exc:
        report.problem(f"data folder {folder}: {existing} is not writable ({exc.strerror or exc})")
        return
    report.ok(f"data folder: {folder} is writable" if existing == folder
              else f"data folder: {folder} will be created (in {existing}, writable)")


def run_doctor(config_path: Path | None = None, *, env: Mapping[str, str] | None = None,
               discord_url: str | None = None, out: Callable[[str], None] = print) -> int:
    """Print the report; 0 when nothing is a problem, 1 otherwise."""
    env = os.environ if env is None else env
    discord_url = discord_url or DISCORD_GATEWAY_URL
    report = Report()
    report.lines.append("easel doctor")
    discord = _start(_discord_check(discord_url, DISCORD_TIMEOUT_S), DISCORD_TIMEOUT_S + 1)
    _versions(report)
    config = _tolerant_config(config_path, env, report)
    broker_url = config.workers.broker_url
    broker = _start(_broker_check(broker_url, BROKER_TIMEOUT_S), BROKER_TIMEOUT_S + 1) if broker_url else None
    _device(config, report)
    _models(config, env, report)
    _data_folder(config, report)
    reachable, text = discord()
    if reachable:
        report.ok(f"discord: {discord_url} answers ({text})")
    else:
        report.problem(f"discord: cannot reach {discord_url} ({text}); check this machine's internet connection, "
                       "DNS and any firewall or proxy")
    if env.get("DISCORD_TOKEN", "").strip():
        report.ok("DISCORD_TOKEN is set")
    else:
        report.problem("DISCORD_TOKEN is not set; `easel run` needs it (Discord developer portal -> your app -> Bot)")
    if broker is None:
        report.ok("workers: no broker (jobs run in the bot's own process)")
    else:
        reachable, text = broker()
        if reachable:
            report.ok(f"workers: broker {_redacted(broker_url)} {text}")
        else:
            report.problem(f"workers: broker {_redacted(broker_url)} does not answer ({text})")
    report.lines.append("no problems found" if not report.problems
                        else f"{report.problems} problem{'s' if report.problems != 1 else ''} found")
    for line in report.lines:
        out(line)
    return 0 if not report.problems else 1
