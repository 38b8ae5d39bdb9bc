"""Redaction: what must vanish from the audit log, what must survive, and a property over both."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opsgate.audit import REDACTED, redact
from opsgate.audit.redact import is_secret_key

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MX0.Sfl-KxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
    "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n"
    "-----END RSA PRIVATE KEY-----"
)
AWS_ID = "AKIAIOSFODNN7EXAMPLE"
GH = "ghp_" + "R2d2C3po" * 4 + "Xw9z"
GH_PAT = "github_pat_11ABCDEFG0abcdefghijkl_mnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUV"
SLACK = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"

# (input, text that must not survive, exact expected output or None)
POSITIVES: list[tuple[Any, str, Any]] = [
    # secret keys, any spelling
    ({"password": "hunter2!x"}, "hunter2!x", {"password": REDACTED}),
    ({"DB_PASSWORD": "pg-s3cret"}, "pg-s3cret", {"DB_PASSWORD": REDACTED}),
    ({"apiKey": "k-123456"}, "k-123456", {"apiKey": REDACTED}),
    ({"x-api-key": "k-234567"}, "k-234567", None),
    ({"API_KEY": "k-345678"}, "k-345678", None),
    ({"client_secret": "cs-0001"}, "cs-0001", None),
    ({"accessToken": "at-0002"}, "at-0002", None),
    ({"refresh_token": "rt-0003"}, "rt-0003", None),
    ({"dbpassword": "pw-0004"}, "pw-0004", None),
    ({"Authorization": "Opaque zz-0005"}, "zz-0005", None),
    ({"HTTPAuthorization": "zz-0006"}, "zz-0006", None),
    ({"private_key": "pk-0007"}, "pk-0007", None),
    ({"aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG"}, "wJalrXUtnFEMI", None),
    ({"aws_access_key_id": "id-0008"}, "id-0008", None),
    ({"sessionKey": "sk-0009"}, "sk-0009", None),
    ({"Cookie": "sid=abc0010"}, "abc0010", None),
    ({"credentials": {"user": "bob", "pass": "pw-0011"}}, "pw-0011", {"credentials": REDACTED}),
    ({"passwd": ["pw-0012"]}, "pw-0012", {"passwd": REDACTED}),
    ({"pwd": "pw-0013"}, "pw-0013", None),
    ({"bearer": "bt-0014"}, "bt-0014", None),
    ({"password": 13579246}, "13579246", {"password": REDACTED}),  # a numeric PIN is still a password
    ({"token": None, "password": False}, "zzz-not-there", {"token": None, "password": False}),
    # env-style name/value pairs
    ({"name": "DB_PASSWORD", "value": "pg-0015"}, "pg-0015", {"name": "DB_PASSWORD", "value": REDACTED}),
    ({"name": "GITHUB_TOKEN", "value": "t-0016"}, "t-0016", None),
    ({"key": "api-key", "value": "t-0017"}, "t-0017", None),
    ({"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "s-0018"}]}, "s-0018", None),
    # credential-shaped text
    ("Authorization: Bearer abc.def-0019_ghi", "abc.def-0019_ghi", "Authorization: Bearer [REDACTED]"),
    ("Bearer abcdef0020XYZ", "abcdef0020XYZ", "Bearer [REDACTED]"),
    ('curl -H "Authorization: Basic dXNlcjpwYXNz"', "dXNlcjpwYXNz", 'curl -H "Authorization: Basic [REDACTED]"'),
    ("basic dXNlcjpwYXNzMDAyMQ==", "dXNlcjpwYXNzMDAyMQ", None),
    (f"token is {JWT} ok", JWT, f"token is {REDACTED} ok"),
    (f"key:\n{PEM}\nafter", "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun", None),
    (PEM.split("-----END")[0], "VTLw7onLRnrq0", None),  # no END line: redacted to the end
    (f"id={AWS_ID}", AWS_ID, None),
    (f"aws {AWS_ID} here", AWS_ID, f"aws {REDACTED} here"),
    ("ASIAY34FZKBOKMUTVV7A", "ASIAY34FZKBOKMUTVV7A", REDACTED),
    (f"git clone https://x:{GH}@github.com/o/r", GH, None),
    (f"use {GH}", GH, f"use {REDACTED}"),
    (GH_PAT, GH_PAT[11:], REDACTED),
    (SLACK, SLACK[5:], REDACTED),
    ("password=hunter0022 user=bob", "hunter0022", "password=[REDACTED] user=bob"),
    ("DB_PASSWORD=pg0023 LOG=info", "pg0023", "DB_PASSWORD=[REDACTED] LOG=info"),
    ("token: tk0024", "tk0024", "token: [REDACTED]"),
    ('{"client_secret": "cs 0025"}', "cs 0025", '{"client_secret": "[REDACTED]"}'),
    ("{'api_key': 'ak0026'}", "ak0026", "{'api_key': '[REDACTED]'}"),
    ('{\\"password\\":\\"pw0027\\"}', "pw0027", '{\\"password\\":\\"[REDACTED]\\"}'),
    ("spring.datasource.password = pw0028", "pw0028", "spring.datasource.password = [REDACTED]"),
    ("https://h/cb?code=1&access_token=at0029&x=1", "at0029", "https://h/cb?code=1&access_token=[REDACTED]&x=1"),
    ("kubectl get po --token tk0030 -n x", "tk0030", "kubectl get po --token [REDACTED] -n x"),
    ("kubectl --token=tk0031", "tk0031", "kubectl --token=[REDACTED]"),
    ("Cookie: sid=ck0032; theme=dark", "theme=dark", "Cookie: [REDACTED]"),
    ("set-cookie: sid=ck0033; Path=/", "ck0033", None),
    ("postgres://app:pg0034@db:5432/app", "pg0034", "postgres://app:[REDACTED]@db:5432/app"),
    ("https://:pw0035@host/", "pw0035", "https://:[REDACTED]@host/"),
    ("redis://u:p@ss0036@cache:6379", "ss0036", "redis://u:[REDACTED]@cache:6379"),
    ("Authorization: token tk0037", "tk0037", "Authorization: token [REDACTED]"),
    ("monkey:password=pw0038", "pw0038", "monkey:password=[REDACTED]"),
    # nested anywhere, and in keys
    ([{"a": [{"b": "x-api-key: k0039"}]}], "k0039", None),
    ({"Bearer tok0040abcdef": 1}, "tok0040abcdef", None),
    (("tuple", AWS_ID), AWS_ID, ("tuple", REDACTED)),
]

NEGATIVES: list[Any] = [
    {"monkey": "banana", "keyboard": "qwerty", "key": "value", "keys": ["a", "b"]},
    {"tokenizer_name": "bert-base-uncased", "tokenizer": "bpe", "max_tokens": 512, "prompt_tokens": 12},
    {"tokens": [101, 2023, 102], "token_ids": [1, 2], "token_type": "Bearer", "token_count": 3},
    {"secretName": "db-creds", "secretKeyRef": {"name": "db", "key": "password"}, "password_file": "/run/p"},
    {"env": [{"name": "TOKENIZER_NAME", "value": "bert"}, {"name": "LOG_LEVEL", "value": "info"}]},
    {"author": "alice", "oauth_provider": "github", "passwordless": "enabled", "secretary": "bob"},
    {"access_mode": "ReadWriteOnce", "auth_type": "oidc", "kind": "Secret"},
    {"replicas": 3, "ratio": 0.5, "enabled": True, "nothing": None, "big": 2**52},
    "nginx:1.25",
    "ghcr.io/org/app@sha256:" + "ab" * 32,
    "https://example.com:8443/path?q=1&page=2",
    "ssh://git@github.com:22/org/repo.git",
    "http://user@host/",  # a user, but no password
    "Basic usage of the API",
    "Bearer tokens are short",
    "the token was rejected",
    "eyJhbGciOiJIUzI1NiJ9 alone is a header, not a JWT",
    "AKIA is a prefix",
    "ghp_short",
    "2025-01-01T00:00:00Z",
    "replicas=3 image=nginx:1.25",
    "max_tokens=5 tokenizer=bert",
    "",
    42,
    1.5,
    True,
    None,
]


@pytest.mark.parametrize(("value", "secret", "expected"), POSITIVES, ids=[str(i) for i in range(len(POSITIVES))])
def test_secret_is_redacted(value: Any, secret: str, expected: Any) -> None:
    out = redact(value)
    assert secret not in json.dumps(out), out
    if expected is not None:
        assert out == expected


@pytest.mark.parametrize("value", NEGATIVES, ids=[str(i) for i in range(len(NEGATIVES))])
def test_innocent_value_is_untouched(value: Any) -> None:
    assert redact(value) == value


# fmt: off
SECRET_KEY_NAMES = [
    "password", "Password", "DB_PASSWORD", "apiKey", "api-key", "X-Api-Key", "apikey", "accessKeyId",
    "secret_key", "privateKey", "x-auth-token", "auth", "authorization", "OAuth2Token", "clientsecret",
    "set-cookie", "credentials", "ssh_key", "id_token",
]
INNOCENT_KEY_NAMES = [
    "key", "monkey", "keyboard", "tokenizer_name", "max_tokens", "secretName", "secretKeyRef", "token_type",
    "passwordless", "author", "oauth", "public_key", "",
]
# fmt: on


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        *((key, True) for key in SECRET_KEY_NAMES),
        *((key, False) for key in INNOCENT_KEY_NAMES),
    ],
)
def test_key_rule(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_input_is_not_modified() -> None:
    value = {"password": "x", "nested": [{"token": "y"}], "s": "Bearer abcdefgh1234"}
    before = json.dumps(value)
    out = redact(value)
    assert json.dumps(value) == before
    assert out is not value and out["nested"] is not value["nested"]


def test_colliding_redacted_keys_are_all_kept() -> None:
    out = redact({AWS_ID: 1, "AKIAABCDEFGHIJKLMNOP": 2})
    assert sorted(out.values()) == [1, 2]
    assert all(AWS_ID not in k for k in out)


@pytest.mark.parametrize("unit", ["eyJ", "eyJa.", "a:", 'k:"', "--token ", "password=", "Cookie: ", "Bearer ", "://a:"])
def test_large_adversarial_strings_stay_linear(unit: str) -> None:
    """A guard against catastrophic backtracking, not a speed target: 10x the input costs about 10x
    when the patterns are linear and about 100x (seconds, here) when they backtrack. Best of three
    runs each, and a floor under which the ratio is not read, keep a busy machine from failing it."""
    small, big = unit * (20_000 // len(unit)), unit * (200_000 // len(unit))

    def best_of_three(text: str) -> float:
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            redact(text)
            runs.append(time.perf_counter() - start)
        return min(runs)

    t_small, t_big = best_of_three(small), best_of_three(big)
    assert t_big < 5.0
    assert t_big < 40 * t_small or t_big < 0.05, (t_small, t_big)


# --- property: a planted secret never survives, wherever it is planted --------------------------

_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_B64URL = _ALNUM + "-_"
_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

# Cores carry a marker so they cannot occur by chance elsewhere in the generated structure.
core = st.text(_ALNUM, min_size=8, max_size=24).map(lambda s: "Zq9" + s)
b64 = st.text(_B64URL, min_size=8, max_size=40)

# fmt: off
SECRET_KEYS = [
    "password", "DB_PASSWORD", "apiKey", "x-api-key", "client_secret", "accessToken", "Authorization",
    "private_key", "aws_secret_access_key", "sessionKey", "Cookie", "credentials", "refreshToken", "passwd",
    "GITHUB_TOKEN", "secret",
]
# fmt: on
TEXT_TEMPLATES = [
    "Bearer {c}",
    "Authorization: Basic {c}",
    "password={c}",
    "token: {c}",
    "API_KEY={c}",
    '"client_secret": "{c}"',
    "--password {c}",
    "--token={c}",
    "postgres://user:{c}@db:5432/app",
    "https://bob:{c}@example.com/x",
    "x-api-key: {c}",
    "Cookie: sid={c}",
    "DB_PASSWORD='{c}'",
    "https://h/cb?access_token={c}&x=1",
]


@st.composite
def planted(draw: st.DrawFn) -> tuple[Any, str]:
    """A value holding one secret, and the secret text that must not appear after redaction."""
    kind = draw(st.sampled_from(["key", "env", "text", "jwt", "aws", "github", "slack", "pem"]))
    if kind == "key":
        c = draw(core)
        return {draw(st.sampled_from(SECRET_KEYS)): c}, c
    if kind == "env":
        c = draw(core)
        return {"name": draw(st.sampled_from(SECRET_KEYS)).upper().replace("-", "_"), "value": c}, c
    if kind == "text":
        c = draw(core)
        secret_text = draw(st.sampled_from(TEXT_TEMPLATES)).format(c=c)
    elif kind == "jwt":
        c = secret_text = "eyJ" + draw(b64) + ".eyJ" + draw(b64) + "." + draw(b64)
    elif kind == "aws":
        c = secret_text = draw(st.sampled_from(["AKIA", "ASIA"])) + draw(st.text(_UPPER, min_size=16, max_size=16))
    elif kind == "github":
        prefix = draw(st.sampled_from(["ghp_", "gho_", "ghs_", "ghu_"]))
        c = secret_text = prefix + draw(st.text(_ALNUM, min_size=36, max_size=36))
    elif kind == "slack":
        c = secret_text = "xoxb-" + draw(st.text(_ALNUM, min_size=12, max_size=30))
    else:
        c = "Zq9" + draw(st.text(_ALNUM, min_size=40, max_size=64))
        secret_text = f"-----BEGIN PRIVATE KEY-----\n{c}\n-----END PRIVATE KEY-----"
    # Embed the text in arbitrary words, separated by whitespace or a newline.
    before = draw(st.text(max_size=20))
    after = draw(st.text(max_size=20))
    sep = draw(st.sampled_from([" ", "\n", "\t", "  "]))
    return f"{before}{sep}{secret_text}{sep}{after}" if before or after else secret_text, c


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _plant(data: st.DataObject, base: Any, item: Any) -> Any:
    """Put ``item`` somewhere in ``base``: in a list, as a dict value or key, or next to a scalar."""
    if isinstance(base, dict) and base and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(base)))
        return {**base, key: _plant(data, base[key], item)}
    if isinstance(base, list) and base and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(base) - 1))
        return [*base[:i], _plant(data, base[i], item), *base[i + 1 :]]
    if isinstance(base, dict):
        if isinstance(item, str) and data.draw(st.booleans()):
            return {**base, item: data.draw(json_like)}  # a secret as a key
        return {**base, "k" + str(len(base)): item}
    if isinstance(base, list):
        return [*base, item]
    return [base, item]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=json_like, plant=planted(), data=st.data())
def test_planted_secret_never_survives(base: Any, plant: tuple[Any, str], data: st.DataObject) -> None:
    item, secret = plant
    value = _plant(data, base, item)
    assert secret in json.dumps(value)
    out = json.dumps(redact(value))
    assert secret not in out


@settings(max_examples=200, deadline=None)
@given(value=json_like)
def test_redact_is_idempotent_and_keeps_shape(value: Any) -> None:
    once = redact(value)
    assert redact(once) == once
    assert type(once) is type(value)
