"""config.yaml, parsed once at start-up into typed, validated dataclasses.

Secrets never live here: the bot token comes from the environment (`DISCORD_TOKEN`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import stat
import types
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml

from iris.errors import BadRequest, ConfigError
from iris.labels import check_labels
from iris.request import GENERATORS, PROFILES

MAX_CONFIG_BYTES = 2**20  # a config file is a few KiB; more is the wrong file

T = TypeVar("T")


@dataclass(frozen=True)
class Range:
    """A field's limits, declared on the field itself: `steps: Annotated[int, Range(ge=1)] = 300`."""

    ge: float | None = None  # value >= ge
    gt: float | None = None  # value > gt
    le: float | None = None  # value <= le

    def check(self, value: float, where: str) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value}")
        if self.gt is not None and not value > self.gt:
            if self.gt == 0:
                raise ConfigError(f"{where} must be positive, got {value}")
            raise ConfigError(f"{where} must be greater than {self.gt:g}, got {value}")
        if self.ge is not None and not value >= self.ge:
            if self.ge == 1 and isinstance(value, int):
                raise ConfigError(f"{where} must be positive, got {value}")
            raise ConfigError(f"{where} must be at least {self.ge:g}, got {value}")
        if self.le is not None and not value <= self.le:
            raise ConfigError(f"{where} must be at most {self.le:g}, got {value}")


@dataclass(frozen=True)
class Pattern:
    """A string field's shape: `Annotated[str, Pattern(r"\\d{17,20}", "a server id")]`."""

    regex: str
    meaning: str

    def check(self, value: str, where: str) -> None:
        if not re.fullmatch(self.regex, value):
            raise ConfigError(f"{where}: {value!r} is not {self.meaning}")


Positive = Annotated[int, Range(ge=1)]  # a count: 1 or more
PositiveFloat = Annotated[float, Range(gt=0)]  # a size or duration: more than 0
Fraction = Annotated[float, Range(ge=0, le=1)]
Snowflake = Annotated[str, Pattern(r"[0-9]{15,21}", "a Discord id (digits, in quotes)")]


class Automatic(int):
    """A number the config left as `auto`: this value until the engine picks one for its device.

    An int, so every reader can use it as is (the CPU value); `models.device.resolve_imagine` replaces it.
    """

    def __repr__(self) -> str:
        return f"auto({int(self)})"


@dataclass(frozen=True)
class AutoAllowed:
    """A numeric field that also accepts `auto`: `Annotated[int, Range(ge=16), AutoAllowed(256)]`."""

    fallback: int  # the value `auto` stands for until it is resolved (the CPU's)


@dataclass(frozen=True)
class WeightsConfig:
    # where downloaded weights live; None: $IRIS_CACHE, else DATA/cache when a data dir is named, else
    # ~/.cache/iris; a relative path is inside the data dir
    cache_dir: str | None = None
    offline: bool = False  # never touch the network; a missing file is an error that says how to get it
    mirrors: list[Annotated[str, Pattern(r"(https?|file)://\S+", "an http(s):// or file:// URL")]] = field(
        default_factory=list
    )  # base URLs tried before the public sources, laid out as BASE/PRESET/FILE (e.g. BASE/vq-f8/last.ckpt)


@dataclass(frozen=True)
class ClipConfig:
    preset: str = "ViT-B-32/laion2b_s34b_b79k"  # a name from `iris download --list`, or "toy"
    checkpoint: str | None = None  # local weights file (.pt/.bin/.safetensors) instead of the preset's
    arch_config: str | None = None  # open_clip JSON of a custom architecture (used with `checkpoint`)
    batch_size: Positive = 32  # images per forward pass when embedding
    text_cache: Annotated[int, Range(ge=0)] = 512  # label/text embeddings kept in the LRU cache (0: none)


@dataclass(frozen=True)
class ClassifyConfig:
    templates: str = "openai"  # prompt ensemble: "openai" (80 templates), "simple" (7) or "none"
    top_k: Positive = 5  # labels shown per image
    default_labels: list[str] = field(
        default_factory=lambda: ["a photo", "a drawing", "a screenshot", "a meme", "a diagram", "text"]
    )  # used when the user gives none
    max_labels: Positive = 50  # labels per request
    max_label_chars: Positive = 100  # characters per label


@dataclass(frozen=True)
class VQGANConfig:
    preset: str | None = "vqgan_imagenet_f16_16384"  # a VQGAN preset name or "toy"; None: pixels only
    config: str | None = None  # local taming YAML config (with `checkpoint`) instead of the preset
    checkpoint: str | None = None  # local .ckpt/.safetensors
    trust_pickle: bool = (
        False  # allow full unpickling of a .ckpt whose sha256 is neither known nor recorded at its download
    )


@dataclass(frozen=True)
class ImagineConfig:
    generator: str = "vqgan"  # "vqgan", or "pixels" (optimise RGB directly; no VQGAN weights needed)
    steps: Annotated[int, Range(ge=1), AutoAllowed(300)] = Automatic(
        300
    )  # optimisation steps per image; auto: 500 on a GPU, 300 on the CPU
    width: Annotated[int, Range(ge=16), AutoAllowed(256)] = Automatic(
        256
    )  # px, rounded to the VQGAN's factor; auto: 512 on a GPU with >= 8 GB, 304 below, 256 on the CPU
    height: Annotated[int, Range(ge=16), AutoAllowed(256)] = Automatic(256)  # px; auto: as width
    cutouts: Annotated[int, Range(ge=1, le=128)] = (
        32  # augmented views scored by CLIP per step (fewer: less memory, noisier)
    )
    lr: Annotated[float, Range(gt=0, le=10)] = 0.1  # Adam learning rate on the latents
    preview_every: Positive = 50  # steps between progress previews
    max_steps: Positive = 1000  # upper bound a request may ask for
    max_side: Annotated[int, Range(ge=16)] = 512  # px, upper bound for width and height
    max_prompt_chars: Positive = 500  # longer prompts are refused
    profile: str = "classic"  # cutout recipe: "classic" (the reference scripts'), "iris" or "none"
    # Upscale's super-resolution model: a preset (RealESRGAN_x2plus, fetched by `iris download`) or a local
    # .pth/.safetensors file of an ESRGAN-family model; None (or not installed): Lanczos, labelled so.
    upscaler: str | None = None


@dataclass(frozen=True)
class ManagerConfig:
    max_queue: Positive = 20  # generations waiting at most; one more gets QueueFull
    max_queued_per_user: Annotated[int, Range(ge=0)] = 2  # generations one user may have waiting
    max_running_per_user: Positive = 1  # generations one user may have running
    short_batch_size: Positive = 32  # short jobs (classify/embed) batched into one forward pass, at most
    step_slice: Positive = 8  # cutouts per slice of a generation step; waiting short jobs run between slices
    job_deadline_s: PositiveFloat = (
        900.0  # wall-clock limit of one generation, seconds, checked between steps
    )
    close_grace_s: Annotated[float, Range(ge=0)] = (
        10.0  # on shutdown, seconds to let work finish before cancelling it
    )
    drain_on_close: bool = (
        False  # on shutdown, run queued jobs within the grace (else keep them for next start)
    )
    journal_path: str = "iris-jobs.sqlite3"  # SQLite journal of jobs (survives restarts); relative: in DATA
    retention_days: Annotated[float, Range(ge=0)] = (
        30.0  # days a finished job (with its pictures and init image) stays in the journal; 0: forever
    )
    backend: str = "local"  # "local": the device work runs on this machine, no broker; "nats": on workers
    isolate: bool = True  # local: run the device work in a child process, replaced when it hangs or dies
    watchdog_grace_s: PositiveFloat = (
        30.0  # a step silent past the job's deadline plus this grace (or this long for a short job) is hung
    )


@dataclass(frozen=True)
class GuildConfig:
    imagine_channels: list[Snowflake] = field(
        default_factory=list
    )  # channel ids where /imagine works; []: all
    max_queued_per_user: Annotated[int, Range(ge=0)] | None = (
        None  # overrides manager.max_queued_per_user in this server
    )
    default_labels: list[str] | None = None  # overrides classify.default_labels in this server
    find_excluded: list[Snowflake] = field(default_factory=list)  # channel ids /find never scans or shows
    banned_prompts: list[str] = field(
        default_factory=list
    )  # regexes refused in this server, besides discord.banned_prompts (which apply everywhere)


@dataclass(frozen=True)
class DiscordConfig:
    dev_guilds: list[Snowflake] = field(default_factory=list)  # server ids that get the commands at start-up
    none_threshold: Fraction = 0.25  # /classify notes "none of these" when the best probability is lower
    banned_prompts: list[str] = field(default_factory=list)  # regexes (case-insensitive) refused politely
    thread_per_job: bool = False  # open a thread per /imagine (for busy channels)
    edits_per_window: Positive = 4  # progress edits of one message at most per window (Discord allows ~5/5 s)
    edit_window_s: PositiveFloat = 5.0  # seconds
    guilds: dict[Snowflake, GuildConfig] = field(default_factory=dict)  # per-server overrides, by server id
    find_k: Annotated[int, Range(ge=1, le=10)] = 9  # /find hits per page (a 3×3 grid; 10 at most)
    find_download_concurrency: Positive = 4  # image downloads at once while indexing
    find_downloads_per_s: Annotated[float, Range(ge=1)] = 20.0  # image downloads per second at most
    find_allowed_hosts: list[str] = field(
        default_factory=lambda: [
            "cdn.discordapp.com",
            "media.discordapp.net",
            "images-ext-1.discordapp.net",
            "images-ext-2.discordapp.net",
        ]
    )  # the only hosts /find downloads from (https); "http://host:port" allows exactly that origin
    find_download_timeout_s: PositiveFloat = 30.0  # one image download, seconds at most
    find_decode_concurrency: Positive = 2  # images decoded at once while indexing (bounds memory)
    find_image_side: Annotated[int, Range(ge=32)] = (
        224  # px: images are reduced while decoding to this short side (CLIP's input)
    )
    find_answer_after_s: Annotated[float, Range(gt=0, le=600)] = (
        5.0  # /find waits this long for indexing, then answers with what is indexed (< the 15 min token)
    )
    shard_count: Positive | None = None  # gateway shards of all processes together (None: one connection)
    shard_ids: list[Annotated[int, Range(ge=0)]] = field(
        default_factory=list
    )  # the shards this process runs ([]: all of shard_count); two processes can each take half


@dataclass(frozen=True)
class ImagesConfig:
    max_bytes: Positive = 25 * 2**20  # largest accepted image file, bytes
    max_pixels: Positive = 40_000_000  # largest accepted width × height (decompression-bomb guard)


@dataclass(frozen=True)
class IndexConfig:
    path: str = "iris-index.sqlite3"  # SQLite file of the image search index; relative: in the data dir
    tombstone_days: PositiveFloat = 7.0  # deleted messages remembered: a racing scan can't re-add them
    retention_days: PositiveFloat = 30.0  # saved /find queries and query-image vectors kept
    search_memory_mib: Positive = 4096  # search vectors in RAM; past it, least recent servers dropped
    url: str | None = None  # postgresql://user:pass@host/db: the index on PostgreSQL + pgvector (shared)


@dataclass(frozen=True)
class NatsConfig:
    url: str = "nats://127.0.0.1:4222"  # the NATS server (JetStream enabled) of manager.backend: nats
    prefix: str = "iris"  # names of the streams, subjects and buckets start with it (several bots, one NATS)
    ack_wait_s: PositiveFloat = 30.0  # a job whose worker stops heart-beating this long goes to another
    heartbeat_s: PositiveFloat = 5.0  # a worker tells the broker it still runs its job this often


@dataclass(frozen=True)
class SettingsConfig:
    path: str = "iris-settings.sqlite3"  # SQLite file of /settings (user defaults, server settings)


@dataclass(frozen=True)
class Config:
    device: str = "auto"  # "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1", ...
    precision: str = "auto"  # "auto" (fp16 autocast on cuda, fp32 on cpu), "fp32", "fp16", "bf16"
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    vqgan: VQGANConfig = field(default_factory=VQGANConfig)
    imagine: ImagineConfig = field(default_factory=ImagineConfig)
    manager: ManagerConfig = field(default_factory=ManagerConfig)
    discord: DiscordConfig = field(default_factory=DiscordConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    settings: SettingsConfig = field(default_factory=SettingsConfig)
    nats: NatsConfig = field(default_factory=NatsConfig)

    # the folder holding all state (journal, index, settings, weights cache, heartbeat); None: $IRIS_DATA,
    # else the current folder
    data_dir: str | None = None

    def __post_init__(self) -> None:
        # State files are the sections' `path` and `*_path` fields. A relative one lives in the data
        # directory, resolved once here so that every reader (the journal, the index, the settings store)
        # gets the same file whatever its working directory.
        for section in dataclasses.fields(self):
            value = getattr(self, section.name)
            if not dataclasses.is_dataclass(value) or isinstance(value, type):
                continue
            moved = {
                f.name: str(self.state_path(getattr(value, f.name)))
                for f in dataclasses.fields(value)
                if (f.name == "path" or f.name.endswith("_path")) and isinstance(getattr(value, f.name), str)
            }
            if moved:
                object.__setattr__(self, section.name, replace(value, **moved))

    @property
    def data_dir_chosen(self) -> bool:
        """Whether a data directory was named (config or $IRIS_DATA) rather than the current folder."""
        return bool(self.data_dir or os.environ.get("IRIS_DATA"))

    @property
    def data_path(self) -> Path:
        """The data directory, absolute: `data_dir`, else $IRIS_DATA, else the current folder."""
        raw = self.data_dir or os.environ.get("IRIS_DATA") or "."
        return Path(os.path.expanduser(raw)).absolute()

    def state_path(self, path: str | os.PathLike[str]) -> Path:
        """A state file's path: absolute (or ~) as written, relative inside the data directory."""
        p = Path(os.path.expanduser(path))
        return p if p.is_absolute() else self.data_path / p

    @property
    def heartbeat_path(self) -> Path:
        """The file `iris run` refreshes and `iris status --local` reads."""
        return self.data_path / "iris-heartbeat.json"

    @property
    def cache_dir(self) -> Path:
        if self.weights.cache_dir:
            return self.state_path(self.weights.cache_dir)
        if os.environ.get("IRIS_CACHE"):
            return Path(os.environ["IRIS_CACHE"])
        if self.data_dir_chosen:
            return self.data_path / "cache"
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(xdg) / "iris"


_CHOICES = {
    "device": None,
    "precision": ("auto", "fp32", "fp16", "bf16"),
    "classify.templates": ("openai", "simple", "none"),
    "imagine.generator": GENERATORS,
    "imagine.profile": PROFILES,
    "manager.backend": ("local", "nats"),
}


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *limits = typing.get_args(tp)
        auto = next((a for a in limits if isinstance(a, AutoAllowed)), None)
        if auto is not None and value == "auto":
            return Automatic(auto.fallback)
        if auto is not None and isinstance(value, str):
            raise ConfigError(f"{where}: expected int or 'auto', got {value!r}")
        if base is str and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # an id written without quotes
        value = _check_type(value, base, where)
        for limit in limits:
            if isinstance(limit, Range | Pattern):
                limit.check(value, where)
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _check_type(value, option, where)
            except ConfigError as e:
                if option is not type(None):
                    errors.append(e)
        raise errors[0]
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected nothing (null), got {value!r}")
    if origin is dict:
        key_t, val_t = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {
            _check_type(str(k), key_t, f"{where} key"): _check_type(v, val_t, f"{where}.{k}")
            for k, v in value.items()
        }
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(typing.cast(type, tp), value, where)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected a whole number, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")
    return value


def _build(cls: type[T], data: Any, where: str) -> T:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown config key {key!r}; known here: {', '.join(sorted(names))}")
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def _validate(cfg: Config) -> None:
    for key, choices in _CHOICES.items():
        section, _, name = key.rpartition(".")
        value = getattr(getattr(cfg, section) if section else cfg, name)
        if choices and value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")
    im = cfg.imagine
    banned = [("discord.banned_prompts", p) for p in cfg.discord.banned_prompts] + [
        (f"discord.guilds.{gid}.banned_prompts", p)
        for gid, g in cfg.discord.guilds.items()
        for p in g.banned_prompts
    ]
    for where, pattern in banned:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"{where}: {pattern!r} is not a valid regex ({e})") from e
    fixed = [v for v in (im.width, im.height) if not isinstance(v, Automatic)]  # auto stays within max_side
    if (not isinstance(im.steps, Automatic) and im.steps > im.max_steps) or max(
        fixed, default=0
    ) > im.max_side:
        raise ConfigError("imagine: the default steps/size exceed imagine.max_steps/max_side")
    if not (cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith(("cuda", "mps"))):
        raise ConfigError(f"device: {cfg.device!r} is not auto, cpu, cuda, cuda:N or mps")
    _validate_shards(cfg.discord)
    label_lists = {"classify.default_labels": cfg.classify.default_labels}
    for gid, guild in cfg.discord.guilds.items():
        if guild.default_labels is not None:
            label_lists[f"discord.guilds.{gid}.default_labels"] = guild.default_labels
    for key, labels in label_lists.items():  # the check every request gets: else each use would fail
        try:
            check_labels(labels, cfg.classify.max_labels, cfg.classify.max_label_chars)
        except BadRequest as e:
            raise ConfigError(f"{key}: {e.message}") from e


def _validate_shards(d: DiscordConfig) -> None:
    """discord.shard_ids name shards of discord.shard_count, each once (Discord closes a bad one: 4010)."""
    if d.shard_ids and d.shard_count is None:
        raise ConfigError(
            "discord.shard_ids needs discord.shard_count (the number of shards in all processes)"
        )
    for i, shard_id in enumerate(d.shard_ids):
        if d.shard_count is not None and shard_id >= d.shard_count:
            raise ConfigError(
                f"discord.shard_ids: shard {shard_id} does not exist with discord.shard_count "
                f"{d.shard_count} (shards are numbered 0 to {d.shard_count - 1})"
            )
        if shard_id in d.shard_ids[:i]:
            raise ConfigError(f"discord.shard_ids: shard {shard_id} is listed twice")


def parse_config(data: Any) -> Config:
    """Validate a parsed YAML mapping into a Config (raises ConfigError naming the bad key)."""
    cfg = _build(Config, data, "")
    _validate(cfg)
    return cfg


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate a config file; None gives the built-in defaults."""
    if path is None:
        return parse_config({})
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the start
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # /dev/zero never ends, a FIFO may never start
                raise ConfigError(f"the config {p} is not a regular file (a pipe or a device?)")
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {p}") from e
    except IsADirectoryError as e:
        raise ConfigError(f"the config {p} is a folder, not a file") from e
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror}") from e
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"the config {p} is over {MAX_CONFIG_BYTES // 2**20} MiB: not a config file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"the config {p} is not UTF-8 text") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {e}") from e
    try:
        return parse_config(data)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e.message}") from e
