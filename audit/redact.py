"""Redaction of secrets from what goes into the audit log (pure, no I/O).

The log is read by people who must not learn the credentials that passed
through opsgate, so tool arguments are redacted before they are recorded.
Over-redaction costs a little audit detail; under-redaction leaks a secret,
so when in doubt this module redacts.

Rules, in the order they apply to a value:

1. **Secret keys.** A mapping key is split into lowercase words on anything
   that is not a letter or digit and on camelCase / letter-digit boundaries
   (``apiKey`` -> api key, ``DB_PASSWORD`` -> db password,
   ``HTTPAuthorization`` -> http authorization). The key names a secret when
   a word is one of password(s), passwd, pwd, passphrase, secret(s), token,
   apikey(s), credential(s), creds, auth, authorization, cookie(s), bearer,
   privatekey, accesskey, secretkey, sessionkey; or a word *ends* in one of
   password, passwd, passphrase, secret(s), token, apikey, credential(s),
   cookie (run-together names: ``dbpassword``, ``accesstoken``,
   ``clientsecret``); or two adjacent words are api+key(s), private+key,
   access+key, secret+key, session+key, ssh+key, signing+key,
   encryption+key, master+key, client+key, tls+key, pass+word, pass+phrase
   (kubeconfig's ``client-key-data``, ``client-key``).
   Not secret: ``key`` alone (``monkey``, ``keyboard``, ``key``), words
   that merely *start* with a secret word (``tokenizer``, ``passwordless``,
   ``secretary``, ``author``), ``oauth``, and plural ``tokens`` (ML APIs use
   it for counts and ids: ``max_tokens``, ``prompt_tokens``). A key whose last
   word says it is *about* a secret rather than the secret itself is not
   secret either: name(s), ref(s), file(s), path(s), dir, type(s), kind, url,
   uri, endpoint, count, length, len, limit, ttl, expiry, expires,
   expiration, usage, index, ids, version, mode, method, provider
   (``secretName``, ``secretKeyRef``, ``password_file``, ``token_type``).
   The value under a secret key becomes ``REDACTED`` whatever it is
   (a string, a number such as a numeric PIN, a whole list or object),
   except ``None`` and booleans, which cannot carry a secret and tell the
   reviewer whether one was set.
2. **Name/value pairs.** In a mapping with ``"value"`` and a ``"name"`` (or
   ``"key"``) that names a secret by rule 1, ``value`` is redacted: this is
   how Kubernetes env vars (``{"name": "DB_PASSWORD", "value": ...}``) and
   header lists are written.
3. **Credential-shaped text.** Every other string (and every mapping key) is
   scanned, and only the secret part is replaced: PEM private key blocks;
   ``key=value`` / ``key: value`` / ``"key": "value"`` / ``--key value``
   where the key names a secret by rule 1 (a bare value ends at whitespace,
   ``,``, ``;`` or ``&``); ``Cookie:`` header lines; ``Bearer``/``Basic``
   credentials; the password in ``scheme://user:password@host``; JWTs;
   AWS access key ids (AKIA/ASIA); GitHub tokens (ghp_, gho_, ghu_, ghs_,
   ghr_, github_pat_); Slack tokens (xox?-).
4. **Kubernetes Secrets.** In a mapping with ``"kind": "Secret"``, every
   value under ``data`` and ``stringData`` is redacted, whatever its key
   (``tls.crt``, ``config.json``): the keys stay, so a reviewer sees which
   entries a call set. A *string* that holds a Secret manifest (``kind:
   Secret`` in YAML, or JSON such as kubectl's last-applied-configuration
   annotation) is parsed and redacted the same way when it is JSON, and
   replaced whole when it is not.
5. Numbers, booleans and ``None`` outside secret keys are returned unchanged,
   as are objects of non-JSON types (they are not inspected).

Every pattern runs in time linear in the text (bounded repeats, literal
anchors), since this runs on every tool call and arguments are untrusted.

Known limits (text only; structured secrets are caught by rules 1-2): an
unquoted value with spaces after a secret key loses only its first word; a
YAML block scalar (``password: |``) is not followed onto the next line; a URL
password containing ``/``, ``?`` or ``#`` unescaped is not recognised; a bare
secret with no telling key or shape (``"hunter2"``) cannot be recognised.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

__all__ = ["REDACTED", "is_secret_key", "redact", "redact_text"]

REDACTED = "[REDACTED]"


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_SECRET_WORDS = _words(
    "password passwords passwd pwd passphrase secret secrets token apikey apikeys credential credentials"
    " creds auth authorization cookie cookies bearer privatekey accesskey secretkey sessionkey"
)
_SECRET_SUFFIXES = tuple(
    sorted(_words("password passwd passphrase secret secrets token apikey credential credentials cookie"))
)
_SECRET_PAIRS = frozenset(
    tuple(pair.split("+"))
    for pair in _words(
        "api+key api+keys private+key access+key secret+key session+key ssh+key signing+key"
        " encryption+key master+key client+key tls+key pass+word pass+phrase"
    )
)
_ABOUT_WORDS = _words(
    "name names ref refs file files path paths dir type types kind url uri endpoint count length len limit"
    " ttl expiry expires expiration usage index ids version mode method provider"
)
_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")


@lru_cache(maxsize=8192)
def is_secret_key(key: str) -> bool:
    """Does this key (or env var name) name a secret? See rule 1 in the module docstring."""
    words = [w.lower() for w in _WORD.findall(key[:256])]
    if not words or words[-1] in _ABOUT_WORDS:
        return False
    previous = ""
    for word in words:
        if word in _SECRET_WORDS or (previous, word) in _SECRET_PAIRS:
            return True
        if word.endswith(_SECRET_SUFFIXES) and word not in _SECRET_SUFFIXES:
            return True
        previous = word
    return False


# --- credential-shaped text ------------------------------------------------------------------

_PEM = re.compile(
    r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
    r"(?:.*?-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|.*)",
    re.DOTALL,
)
# key <sep> value. The key starts a run of identifier characters (the look-behind makes
# the engine try each run once) and is at most 128 long, so the search stays linear. The
# value is matched separately, and only after a secret key, so a harmless key never
# swallows the text that follows it ("https://h/?access_token=...").
_KEY_SEP = re.compile(r"(?<![A-Za-z0-9_.\-])(?P<key>[A-Za-z0-9_.\-]{1,128})\\?[\"']?[ \t]*[:=][ \t]*")
_VALUE = re.compile(
    r"(?P<scheme>(?i:bearer|basic|token|digest|negotiate)[ \t]+)?"
    r"(?P<value>\\?\"[^\"]*\"|'[^']*'|[^\s,;&\"'<>]+)"
)
_FLAG_SEP = re.compile(r"(?<![A-Za-z0-9_\-])(?P<key>--[A-Za-z][A-Za-z0-9_.\-]{0,127})[ \t]+")
_FLAG_VALUE = re.compile(r"(?P<scheme>)(?P<value>\"[^\"]*\"|'[^']*'|[^\s\"'\-][^\s]*)")
_COOKIE = re.compile(r"(?i)(?<![A-Za-z0-9_\-])((?:set-)?cookie[ \t]*:[ \t]*)[^\r\n\"']+")
_AUTH_HEADER = re.compile(
    r"(?i)(?<![A-Za-z0-9_\-])(?P<scheme>bearer|basic)[ \t]+"
    r"(?-i:(?![a-z]+(?![A-Za-z0-9._~+/=\-])))"  # 'basic usage', 'bearer authentication' are prose
    r"[A-Za-z0-9._~+/\-]{8,}=*"
)
_URL_PASSWORD = re.compile(r"(?P<head>://[^:/?#@\s]{0,256}:)[^/?#\s]{1,1024}@")
_JWT = re.compile(  # three (JWS) to five (JWE) base64url parts; starts a run so it stays linear
    r"(?<![A-Za-z0-9_\-])eyJ[A-Za-z0-9_\-]{2,}+\.[A-Za-z0-9_\-]{2,}+\.[A-Za-z0-9_\-]*+(?:\.[A-Za-z0-9_\-]*+){0,2}"
)
_AWS_KEY_ID = re.compile(r"A(?:KI|SI)A[A-Z0-9]{16}")
_GITHUB = re.compile(r"g(?:h[pousr]_[A-Za-z0-9]{20,}|ithub_pat_[A-Za-z0-9_]{20,})")
_SLACK = re.compile(r"xox[a-z]-[A-Za-z0-9\-]{10,}")


def _redact_after_keys(text: str, key_sep: re.Pattern[str], value_re: re.Pattern[str]) -> str:
    """Replace the value after every secret key that ``key_sep`` finds (keeping quotes and scheme)."""
    parts: list[str] = []
    pos = done = 0
    while (found := key_sep.search(text, pos)) is not None:
        pos = found.end()
        if not is_secret_key(found["key"]):
            continue
        value = value_re.match(text, pos)
        if value is None:
            continue
        raw = value["value"]
        quote = raw[:2] if raw.startswith('\\"') else raw[0] if raw[0] in "\"'" else ""
        parts += [text[done:pos], value["scheme"] or "", quote, REDACTED, quote]
        done = pos = value.end()
    if not parts:
        return text
    parts.append(text[done:])
    return "".join(parts)


# Every secret key contains one of these stems (see the word lists above), as does every
# auth scheme we look for; text without any of them skips the key-driven passes. Searching
# lowercased text without IGNORECASE is several times faster.
_STEM = re.compile(r"pass|pwd|secret|token|key|cred|auth|cookie|bearer|basic")


_SECRET_KIND = re.compile(r"""(?<![A-Za-z0-9_])kind\\?["']?[ \t]*[:=][ \t]*\\?["']?Secret(?![A-Za-z0-9_\-])""")
_SECRET_DATA_KEYS = frozenset({"data", "stringData"})


def _redact_secret_manifest(text: str) -> str:
    """A string holding a Secret manifest: redact it as structure if it is JSON, else drop it whole."""
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return REDACTED
    if not isinstance(parsed, dict | list):
        return REDACTED
    return json.dumps(redact(parsed), ensure_ascii=False, separators=(",", ":"))


def redact_text(text: str) -> str:
    """Replace the credential parts of one string (rules 3 and 4).

    Each pass is guarded by a cheap substring test, so ordinary strings cost well
    under a microsecond and large payloads (base64 inputs) stay linear.
    """
    if "Secret" in text and _SECRET_KIND.search(text) is not None:
        return _redact_secret_manifest(text)
    if "PRIVATE KEY" in text:
        text = _PEM.sub(REDACTED, text)
    low = text.lower()
    if _STEM.search(low) is not None:
        if ":" in text or "=" in text:
            text = _redact_after_keys(text, _KEY_SEP, _VALUE)
        if "--" in text:
            text = _redact_after_keys(text, _FLAG_SEP, _FLAG_VALUE)
        if "cookie" in low:
            text = _COOKIE.sub(rf"\g<1>{REDACTED}", text)
        if "bearer" in low or "basic" in low:
            text = _AUTH_HEADER.sub(rf"\g<scheme> {REDACTED}", text)
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\g<head>{REDACTED}@", text)
    if "eyJ" in text:
        text = _JWT.sub(REDACTED, text)
    if "xox" in text:
        text = _SLACK.sub(REDACTED, text)
    if "IA" in text:  # AKIA, ASIA
        text = _AWS_KEY_ID.sub(REDACTED, text)
    if "_" in text:  # gh?_, github_pat_
        text = _GITHUB.sub(REDACTED, text)
    return text


# --- structures -------------------------------------------------------------------------------


def _conceal(value: Any) -> Any:
    """The value under a secret key: gone, unless it cannot hold a secret (None, bool)."""
    if value is None or isinstance(value, bool):
        return value
    return REDACTED


def _pair_is_secret(mapping: Mapping[Any, Any]) -> bool:
    if "value" not in mapping:
        return False
    for field in ("name", "key"):
        label = mapping.get(field)
        if isinstance(label, str) and is_secret_key(label):
            return True
    return False


def _conceal_entries(value: Any) -> Any:
    """A Secret's ``data``: keep the entry names, drop every value."""
    if isinstance(value, Mapping):
        return {redact_text(k) if isinstance(k, str) else k: _conceal(v) for k, v in value.items()}
    return _conceal(value)


_KEY_MEMO_MAX = 256  # characters: longer keys are worked out each time, so the memo stays small


@lru_cache(maxsize=8192)
def _key_memo(key: str) -> tuple[bool, str]:
    return is_secret_key(key), redact_text(key)


def _key(key: str) -> tuple[bool, str]:
    """Whether a mapping key names a secret, and the key as recorded (rules 1 and 3). Results carry the same
    few dozen keys call after call, so short keys are worked out once (both parts are pure)."""
    return _key_memo(key) if len(key) <= _KEY_MEMO_MAX else (is_secret_key(key), redact_text(key))


def _redact_mapping(mapping: Mapping[Any, Any]) -> dict[Any, Any]:
    pair_secret = _pair_is_secret(mapping)
    secret_kind = mapping.get("kind") == "Secret"
    out: dict[Any, Any] = {}
    for key, value in mapping.items():
        if isinstance(key, str):
            secret, new_key = _key(key)
            secret = secret or (pair_secret and key == "value")
            if new_key in out:  # two keys redacted to the same text: keep both
                n = 2
                while f"{new_key}#{n}" in out:
                    n += 1
                new_key = f"{new_key}#{n}"
        else:
            secret, new_key = False, key
        if secret_kind and key in _SECRET_DATA_KEYS:
            out[new_key] = _conceal_entries(value)
        else:
            out[new_key] = _conceal(value) if secret else redact(value)
    return out


_NUMBERS = frozenset({int, float, bool, type(None)})


def redact(value: Any) -> Any:
    """Deep copy of a JSON-like ``value`` with secrets replaced by ``REDACTED`` (rules in the module doc)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return _redact_mapping(value)
    if isinstance(value, list):  # numbers need no call each: model outputs are long lists of them
        return [item if type(item) in _NUMBERS else redact(item) for item in value]
    if isinstance(value, tuple):
        return tuple(redact(item) for item in value)
    return value
