"""The one settings model, and the flags, environment variables and file keys generated from it.

Precedence, lowest first: the TOML file (``--config``), ``OPSGATE_*`` environment
variables, command-line flags. Every source goes through the same pydantic model
with ``extra="forbid"``, so an unknown or invalid setting stops the server at
start with a message that names it, wherever it came from. The flags (name, type,
help) are built from the model's fields, as pydantic-settings' CLI source does, so
a setting is written once: here.
"""

from __future__ import annotations

import argparse
import os
import tomllib
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo

from opsgate.policies import validate_principal
from opsgate.vocab.names import is_dns1123_label

ENV_PREFIX = "OPSGATE_"
# The README's example grant is for team-*: its first namespace exists on the sandbox from the start.
DEFAULT_SANDBOX_NAMESPACES = ("team-a",)
# Variables with these prefixes belong to the test suite, not to the server.
ENV_IGNORED_PREFIXES = ("OPSGATE_E2E_", "OPSGATE_TEST_")


def default_audit_log() -> Path:
    """XDG state dir: the log outlives the process and is not a cache."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "opsgate" / "audit.jsonl"


class Settings(BaseModel):
    """Everything ``opsgate serve`` can be told. Defaults are the safe choice."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    principal: str | None = Field(
        default=None, description="Who the assistant acts for; when unset, who a real cluster says the "
        "kubeconfig's credentials are (SelfSubjectReview), else the OS user."
    )
    policy: Path | None = Field(
        default=None, description="Casbin policy: a folder (model.conf + *.csv) or one .csv file."
    )
    audit_log: Path = Field(default_factory=default_audit_log, description="Audit log (JSON Lines).")
    audit_signing_key: Path | None = Field(
        default=None, description="Ed25519 private key (opsgate audit keygen) that signs checkpoints; "
        "without one, checkpoints are HMAC-signed with a key kept beside the log."
    )
    audit_checkpoint_every: int = Field(default=1000, ge=1, description="Records between signed checkpoints.")
    audit_max_segment_bytes: int | None = Field(
        default=None, ge=4096, description="Rotate the log into numbered segments past this size."
    )
    models: Path | None = Field(default=None, description="Folder of local ONNX models.")
    kubeconfig: Path | None = Field(default=None, description="Kubeconfig file.")
    context: str | None = Field(default=None, description="Kubeconfig context.")
    kube_timeout_seconds: float = Field(
        default=10.0, gt=0, le=300, description="How long one Kubernetes API request may take to answer."
    )
    read_only: bool = Field(default=False, description="Refuse every tool that changes something.")
    disable_destructive: bool = Field(
        default=False, description="Refuse (and hide) every tool marked destructive; reads and safe writes stay."
    )
    policy_reload_seconds: float = Field(
        default=2.0, ge=0, le=3600, description="How often to look for a changed policy; 0 turns reload off."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Level of the JSON log lines on stderr."
    )
    sandbox_namespaces: tuple[str, ...] = Field(
        default=DEFAULT_SANDBOX_NAMESPACES, json_schema_extra={"metavar": "NS,NS"},
        description="Namespaces the built-in sandbox creates at start, besides default and kube-* "
        "(comma-separated in flags and the environment); the default is the README's example grant's.",
    )

    @field_validator("sandbox_namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, value: Any) -> Any:
        return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value

    @field_validator("sandbox_namespaces")
    @classmethod
    def _namespaces_are_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not is_dns1123_label(name):
                raise ValueError(f"{name!r} is not a namespace name (lowercase letters, digits and '-', "
                                 "starting and ending with a letter or digit, at most 63)")
        return value

    @field_validator("principal")
    @classmethod
    def _principal_is_safe(cls, value: str | None) -> str | None:
        return None if value is None else validate_principal(value)

    @field_validator("policy", "models", "kubeconfig", "audit_signing_key")
    @classmethod
    def _path_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.exists():
            raise ValueError(f"path does not exist: {value}")
        return value


def _value_type(field: FieldInfo) -> Any:
    """The field's type without its ``| None``: what a flag's string is parsed into."""
    annotation = field.annotation
    if get_origin(annotation) in (Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        annotation = options[0] if len(options) == 1 else str
    return annotation


# Settings that are paths: relative ones in a config file are relative to the file.
PATH_SETTINGS = tuple(name for name, f in Settings.model_fields.items() if _value_type(f) is Path)


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, from the model: ``--audit-log`` for ``audit_log``, its description as help.

    Every flag defaults to None ("not given"), so the environment and the file still count; a bool is
    a switch that can only turn its setting on, as the safe defaults are all off.
    """
    for name, field in Settings.model_fields.items():
        kind = _value_type(field)
        help_text = (field.description or "").replace("%", "%%")  # argparse formats help with %
        options: dict[str, Any] = {"dest": name, "help": help_text, "default": None}
        if kind is bool:
            options.update(action="store_const", const=True)
        elif get_origin(kind) is Literal:
            options["choices"] = list(get_args(kind))
        elif kind in (int, float, Path):
            options["type"] = kind
        extra = field.json_schema_extra
        if isinstance(extra, dict) and isinstance(extra.get("metavar"), str):
            options["metavar"] = extra["metavar"]
        parser.add_argument(f"--{name.replace('_', '-')}", **options)


def flag_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags (None: not given), for :func:`load_settings`."""
    return {name: getattr(args, name) for name in Settings.model_fields}


class SettingsError(Exception):
    """A setting that stops the server; the message names the setting and its source."""


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key.startswith(ENV_IGNORED_PREFIXES):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in Settings.model_fields:
            raise SettingsError(f"unknown setting {key} (environment)")
        values[name] = value
    return values


def _from_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise SettingsError(f"--config {path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"--config {path}: {exc}") from exc
    # Accept a flat file or an [opsgate] table, with dashes or underscores in keys.
    table = data.get("opsgate", data)
    if not isinstance(table, dict):
        raise SettingsError(f"--config {path}: [opsgate] must be a table")
    values: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in Settings.model_fields:
            raise SettingsError(f"unknown setting {key!r} in {path}")
        values[name] = value
    # Relative paths in a config file are relative to the file, as users expect.
    for name in PATH_SETTINGS:
        if isinstance(values.get(name), str):
            values[name] = str((path.parent / values[name]).expanduser())
    return values


def load_settings(
    flags: Mapping[str, Any],
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge file < env < flags and validate once; flags set to None do not count."""
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if config_file is not None:
        for key, value in _from_file(config_file).items():
            merged[key], sources[key] = value, f"in {config_file}"
    for key, value in _from_env(os.environ if environ is None else environ).items():
        merged[key], sources[key] = value, f"from {ENV_PREFIX}{key.upper()}"
    for key, value in flags.items():
        if value is not None:
            merged[key], sources[key] = value, f"from --{key.replace('_', '-')}"
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "settings"
            where = sources.get(name.split(".")[0], "")
            problems.append(f"setting {name} {where}: {err['msg']}".replace("  ", " "))
        raise SettingsError("; ".join(problems)) from exc
