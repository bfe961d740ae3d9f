"""Settings: every knob of a run, validated once, frozen, with the API key held as a secret."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from pixazo_batch.bucketpath import BucketPath
from pixazo_batch.errors import UsageError
from pixazo_batch.lifecycle import RunFlags

ENV_PREFIX = "PIXAZO_"
DEFAULT_BASE_URL = "https://gateway.pixazo.ai"
STATE_FILE_NAME = ".pixazo-batch.db"
RESULTS_FILE_NAME = "results.jsonl"
#: the sandbox simulator's memory of accepted jobs, in the output folder
SANDBOX_JOURNAL = ".pixazo-batch.sandbox.jsonl"


def local_folder(out: str) -> Path:
    """The local folder of ``--out``: the folder itself, or, for a bucket, where its state file
    and local copies of the results live (``$XDG_STATE_HOME/pixazo-batch/BUCKET/PREFIX``)."""
    if not out.startswith("s3://"):
        return Path(out)
    where = BucketPath.parse(out, "--out")
    home = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return home / "pixazo-batch" / where.bucket / (where.prefix or "_")


#: hosts for which a plain-http webhook URL is allowed (a gateway or proxy on this machine)
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class Settings(BaseModel):
    """How one run behaves.

    Usage: ``Settings(manifest=Path("jobs.jsonl"), out_dir=Path("out"), api_key="...")``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    manifest: Path
    out_dir: Path
    api_key: SecretStr
    state_path: Path | None = None
    #: ``postgresql://...``: the state database a fleet of workers shares (instead of a file)
    state_url: str | None = None
    #: a worker of a fleet silent this long is taken for dead and its jobs go on elsewhere
    worker_timeout: float = Field(default=60.0, gt=0)
    base_url: str = DEFAULT_BASE_URL
    #: HTTP requests to the gateway at once
    concurrency: int = Field(default=8, ge=1, le=256)
    #: jobs submitted and not yet terminal (the provider's queue)
    max_in_flight: int = Field(default=20, ge=1)
    #: ceiling of the shared request rate to the gateway
    rps: float = Field(default=5.0, gt=0)
    #: submissions per job, counting ERROR resubmissions and refused attempts (never 429s)
    max_attempts: int = Field(default=3, ge=1)
    #: floor between two status requests of one job, in seconds
    poll_interval: float = Field(default=5.0, ge=0)
    #: a job polled this long without a terminal status is reported as stalled
    job_deadline: float = Field(default=1800.0, gt=0)
    resubmit_uncertain: bool = False
    abandon_uncertain: bool = False
    retry_failed: bool = False
    strict: bool = False
    max_spend: Decimal | None = Field(default=None, ge=0)
    retry_after_cap: float = Field(default=300.0, gt=0)
    downloads: int = Field(default=4, ge=1)
    download_tries: int = Field(default=5, ge=1)
    #: a video announcing or bringing more than this many MiB is refused
    max_video_mb: int = Field(default=1024, ge=1)
    #: a media body is cut and resumed when it brings (almost) nothing for this many seconds
    download_stall: float = Field(default=60.0, gt=0)
    submit_timeout: float = Field(default=120.0, gt=0)
    #: after SIGINT/SIGTERM, how long in-flight POSTs may take to return
    stop_deadline: float = Field(default=30.0, ge=0)
    #: how long the gateway may refuse connections before the run stops (exit 3)
    outage_deadline: float = Field(default=900.0, gt=0)
    #: public https URL that reaches ``webhook_listen``; setting it turns callbacks on
    webhook_url: str | None = None
    #: HOST:PORT the callback listener binds
    webhook_listen: str = "127.0.0.1:8787"
    #: ``terminal`` (one callback at the end) or ``sync`` (one per gateway tick as well)
    webhook_mode: Literal["terminal", "sync"] = "terminal"
    #: with webhooks, how long a job whose POST answer was lost waits for its callback
    uncertain_wait: float = Field(default=600.0, ge=0)
    #: days an earlier run's callback URLs stay valid
    webhook_secret_days: float = Field(default=7.0, gt=0)
    #: ``s3://bucket/prefix`` the videos go to (``out_dir`` then holds only local files)
    out_bucket: str | None = None
    #: ``s3://bucket/prefix`` local input images are uploaded to (default: the output bucket's
    #: ``inputs/``)
    inputs: str | None = None

    @model_validator(mode="after")
    def _exclusive_uncertain_choices(self) -> Settings:
        if self.resubmit_uncertain and self.abandon_uncertain:
            raise ValueError("choose --resubmit-uncertain or --abandon-uncertain, not both")
        return self

    @field_validator("webhook_url")
    @classmethod
    def _https_webhook(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = urlsplit(value)
        loopback = url.hostname in _LOOPBACK_HOSTS
        if url.scheme != "https" and not (url.scheme == "http" and loopback):
            raise ValueError("must be an https URL (the gateway refuses plain http)")
        if not url.hostname:
            raise ValueError("must name a host")
        return value

    @field_validator("base_url")
    @classmethod
    def _gateway_url(cls, value: str) -> str:
        url = urlsplit(value)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("must be an http(s) URL with a host, e.g. https://gateway.pixazo.ai")
        if url.query or url.fragment or url.username or url.password:
            raise ValueError("must not carry a query, a fragment or credentials")
        return value

    @field_validator("api_key")
    @classmethod
    def _printable_key(cls, value: SecretStr) -> SecretStr:
        key = value.get_secret_value()
        if not key:
            raise ValueError("is empty")
        if any(ch.isspace() or not ch.isprintable() for ch in key):
            raise ValueError("contains a space, a line break or a control character")
        return value

    @field_validator("out_bucket", "inputs")
    @classmethod
    def _bucket_url(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                BucketPath.parse(value, "")
            except UsageError as exc:
                raise ValueError(str(exc).removeprefix(": ")) from None
        return value

    @field_validator("state_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("webhook_listen")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        _, colon, port = value.rpartition(":")
        if not colon or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:8787")
        return value

    @property
    def bucket(self) -> BucketPath | None:
        """Where the videos go when ``--out`` names a bucket."""
        return None if self.out_bucket is None else BucketPath.parse(self.out_bucket, "--out")

    @property
    def inputs_bucket(self) -> BucketPath | None:
        """Where local input images are uploaded: ``--inputs``, else ``<out bucket>/inputs``."""
        if self.inputs is not None:
            return BucketPath.parse(self.inputs, "--inputs")
        out = self.bucket
        return None if out is None else BucketPath(out.bucket, out.key("inputs"))

    @property
    def state_file(self) -> Path:
        """Where the state lives: ``--state``, else ``OUT/.pixazo-batch.db``."""
        return self.state_path or self.out_dir / STATE_FILE_NAME

    @property
    def state_location(self) -> Path | str:
        """The state: a database URL (``--state postgresql://...``) or the state file."""
        return self.state_url or self.state_file

    @property
    def run_flags(self) -> RunFlags:
        """The operator's standing choices for uncertain and failed jobs."""
        return RunFlags(
            resubmit_uncertain=self.resubmit_uncertain,
            abandon_uncertain=self.abandon_uncertain,
            retry_failed=self.retry_failed,
        )

    @property
    def budget_cents(self) -> int | None:
        """``max_spend`` in whole cents (rounded down: never a cent over the cap)."""
        if self.max_spend is None:
            return None
        return int(self.max_spend * 100)


def load_settings(
    flags: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Settings:
    """Settings from, in rising precedence: ``defaults`` (the sandbox's), a TOML file,
    ``PIXAZO_<FIELD>`` environment variables (``PIXAZO_API_KEY``, ``PIXAZO_BASE_URL``,
    ``PIXAZO_MAX_SPEND``...), and flags (``--max-spend``).

    Flags whose value is None count as not given.

    Raises:
        UsageError: the config file cannot be read, or a value is missing or invalid; the
            message names each value's source (``PIXAZO_MAX_SPEND``, ``jobs.toml: max_spend``,
            ``--max-spend``) and never quotes the key.
    """
    values: dict[str, Any] = dict(defaults or {})
    sources: dict[str, str] = {}
    if config_file is not None:
        try:
            with open(config_file, "rb") as source:
                from_file = tomllib.load(source)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"--config {config_file}: {exc}") from None
        values.update(from_file)
        sources.update({name: f"{config_file}: {name}" for name in from_file})
    environ = os.environ if environ is None else environ
    for name in Settings.model_fields:
        from_env = environ.get(ENV_PREFIX + name.upper())
        if from_env:
            values[name] = from_env
            sources[name] = ENV_PREFIX + name.upper()
    for name, value in flags.items():
        if value is not None:
            values[name] = value
            sources[name] = FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        problems = [_problem(error, sources) for error in exc.errors()]
        raise UsageError("; ".join(problems)) from None


#: settings given on the command line under another name than ``--<field>``
FLAG_NAMES = {
    "out_dir": "--out", "state_path": "--state", "state_url": "--state", "manifest": "MANIFEST",
}  # fmt: skip


def _problem(error: Any, sources: Mapping[str, str]) -> str:
    """One validation error as a line naming where the value came from."""
    name = ".".join(map(str, error["loc"])) or "settings"
    if name == "api_key" and error["type"] == "missing":
        return f"set the API key in the environment variable {ENV_PREFIX}API_KEY"
    if error["type"] == "missing":
        return f"{FLAG_NAMES.get(name, '--' + name.replace('_', '-'))} is required"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{sources.get(name, name)}: {message}"
