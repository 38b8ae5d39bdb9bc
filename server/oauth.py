"""OAuth 2.1 resource server for the team server: bearer JWTs checked against the issuer's published keys.

What the MCP authorization spec asks of a resource server, and no more: the token is a JWT signed by the
configured issuer (its keys found by OIDC discovery, ``/.well-known/openid-configuration`` -> ``jwks_uri``),
issued for this server (``aud`` holds our resource URL, RFC 8707), in date (``exp``, ``nbf``, a small
leeway), signed with an algorithm from a fixed list (RS256, ES256, EdDSA; ``none`` and the HMAC family are
never accepted: a public key must not become a shared secret). The principal and its groups come from
configured claims; groups become policy subjects (``group:platform``).

PyJWT does the signature and claim checks (a dependency of the MCP SDK already, and the library whose
``algorithms=`` allow-list and audience/issuer checks are the well-trodden path). Its ``PyJWKClient`` is not
used: it fetches synchronously and refetches the key set for every unknown ``kid``, so anyone could make us
hammer the issuer; here the set is fetched with httpx on the event loop, cached, and refetched for an unknown
``kid`` at most once per :data:`REFRESH_MIN_S`.

Every refusal is a :class:`TokenRefused` with a short rule word and a sentence; neither holds token content
(at most the ``kid`` and the ``iss`` it claimed, capped, for the audit record).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, get_args

import anyio
import httpx
import jwt
import structlog

from opsgate.policies import validate_principal

from .config import JwtAlgorithm

log = structlog.get_logger("opsgate.oauth")

#: The signature algorithms a token may use (server/config.py); settings may narrow the list, never widen it.
ALLOWED_ALGORITHMS: Final[tuple[str, ...]] = get_args(JwtAlgorithm)
#: Clock skew tolerated on exp, nbf and iat.
LEEWAY_S: Final = 30
#: An unknown ``kid`` refetches the key set at most this often (key rotation; a flood of made-up kids).
REFRESH_MIN_S: Final = 30.0
#: A known key set is refetched after this long anyway (keys withdrawn by the issuer stop working).
KEYS_MAX_AGE_S: Final = 3600.0
#: Longer Authorization values are refused unread (a JWT with a few dozen groups is 2-4 KB).
MAX_TOKEN_BYTES: Final = 16 * 1024
#: Groups taken from a token at most; more are cut (and the cut logged).
MAX_GROUPS: Final = 64
#: Capped bytes of what a refused token claimed (kid, iss) in the audit record.
MAX_CLAIMED: Final = 128
FETCH_TIMEOUT_S: Final = 5.0
#: The discovery document and the key set are read up to this many bytes (a key set of a few dozen keys is
#: tens of KB); a longer answer is refused, not held in memory.
MAX_DOCUMENT_BYTES: Final = 1 << 20
#: What a failed key fetch may raise: the network, a bad answer, or the whole fetch past FETCH_TIMEOUT_S.
_FETCH_FAILED: Final = (httpx.HTTPError, ValueError, TimeoutError)


class TokenRefused(Exception):
    """Why a bearer token was not accepted: ``rule`` a short word, ``message`` a sentence for the client."""

    def __init__(self, rule: str, message: str, *, kid: str | None = None, iss: str | None = None) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message
        self.kid = kid[:MAX_CLAIMED] if isinstance(kid, str) else None
        self.iss = iss[:MAX_CLAIMED] if isinstance(iss, str) else None

    def facts(self) -> dict[str, str]:
        """What the audit record keeps: the rule, the sentence, and the kid and iss the token claimed."""
        facts = {"rule": self.rule, "message": self.message}
        if self.kid:
            facts["kid"] = self.kid
        if self.iss:
            facts["iss"] = self.iss
        return facts


@dataclass(frozen=True)
class OAuthConfig:
    """The resource server's settings (server/config.py ``oauth_*``)."""

    issuer: str
    resource: str
    principal_claim: str = "sub"
    groups_claim: str = "groups"
    group_prefix: str = "group:"
    algorithms: tuple[str, ...] = ALLOWED_ALGORITHMS
    scopes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        wrong = [alg for alg in self.algorithms if alg not in ALLOWED_ALGORITHMS]
        if wrong or not self.algorithms:
            raise ValueError(f"algorithms must be among {', '.join(ALLOWED_ALGORITHMS)}; got {', '.join(wrong)}")
        if not self.group_prefix:  # groups and principals would share names: a user named as a group is one
            raise ValueError("the group prefix must not be empty: a group's subject must differ from every principal")

    @property
    def metadata_url(self) -> str:
        """RFC 9728 section 3.1: the well-known name inserted between host and path of the resource URL."""
        return metadata_url(self.resource)


def metadata_url(resource: str) -> str:
    parsed = httpx.URL(resource)
    path = parsed.path.rstrip("/")
    return str(parsed.copy_with(path="/.well-known/oauth-protected-resource" + path, query=None, fragment=None))


@dataclass(frozen=True)
class Verified:
    """A token that passed: who it is for, and what the SDK's session binding needs."""

    principal: str
    groups: tuple[str, ...]
    subject: str | None
    issuer: str
    client_id: str
    scopes: tuple[str, ...]
    expires_at: int | None
    dropped_groups: int = 0  # groups that cannot be policy subjects, or past MAX_GROUPS


def groups_of(value: Any, prefix: str) -> tuple[tuple[str, ...], int]:
    """Pure: a groups claim (a list of strings, or one string) as policy subjects, and how many were dropped.

    A group whose subject could not be a principal (``role:`` at the front, ``*``, ``,`` or spaces) is dropped:
    in Casbin a subject named like a role would inherit it.
    """
    names = [value] if isinstance(value, str) else list(value) if isinstance(value, list) else []
    kept: list[str] = []
    dropped = 0
    for name in names:
        subject = f"{prefix}{name}" if isinstance(name, str) and name else None
        try:
            if subject is None or len(kept) >= MAX_GROUPS:
                raise ValueError("dropped")
            validate_principal(subject)
        except ValueError:
            dropped += 1
            continue
        if subject not in kept:
            kept.append(subject)
    return tuple(kept), dropped


def identity_of(claims: Mapping[str, Any], config: OAuthConfig) -> Verified:
    """Pure: the principal and groups of verified claims; TokenRefused when the principal claim is unusable."""
    value = claims.get(config.principal_claim)
    if not isinstance(value, str) or not value:
        raise TokenRefused("missing-claim", f"the token has no {config.principal_claim} claim naming its principal")
    try:
        principal = validate_principal(value)
        if principal.casefold().startswith(config.group_prefix.casefold()):
            raise ValueError(f"it starts with {config.group_prefix!r}, which names groups")
    except ValueError as exc:
        raise TokenRefused("principal-claim", f"the token's {config.principal_claim} cannot be a principal ({exc})",
                           iss=str(claims.get("iss"))) from None
    groups, dropped = groups_of(claims.get(config.groups_claim), config.group_prefix)
    scope = claims.get("scope")
    scopes = tuple(scope.split()) if isinstance(scope, str) else ()
    client = claims.get("azp") or claims.get("client_id") or "-"
    exp = claims.get("exp")
    return Verified(
        principal=principal, groups=groups, subject=str(claims["sub"]) if "sub" in claims else None,
        issuer=str(claims.get("iss")), client_id=str(client)[:MAX_CLAIMED], scopes=scopes,
        expires_at=int(exp) if isinstance(exp, int | float) else None, dropped_groups=dropped,
    )


@dataclass
class _Keys:
    keys: dict[str, jwt.PyJWK] = field(default_factory=dict)
    fetched_at: float = float("-inf")
    jwks_uri: str | None = None


class TokenVerifier:
    """Checks bearer JWTs for one issuer and one resource; the issuer's keys cached and refreshed."""

    def __init__(self, config: OAuthConfig, *, client: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self._client = client
        self._keys = _Keys()
        self._lock = anyio.Lock()
        self._audiences = sorted({config.resource, config.resource.rstrip("/"), config.resource.rstrip("/") + "/"})

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=False)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    @property
    def keys_loaded(self) -> bool:
        return bool(self._keys.keys)

    async def load_keys(self) -> bool:
        """For start-up and readiness: fetch the keys unless they are loaded or were tried within
        REFRESH_MIN_S (a probe, or anyone calling /readyz, must not become load on the issuer)."""
        if self.keys_loaded:
            return True
        async with self._lock:
            if not self.keys_loaded and time.monotonic() - self._keys.fetched_at >= REFRESH_MIN_S:
                try:
                    await self.refresh()
                except _FETCH_FAILED as exc:
                    log.warning("oauth_keys_unavailable", issuer=self.config.issuer, error=str(exc)[:300])
                    self._keys = _Keys(self._keys.keys, time.monotonic(), self._keys.jwks_uri)
        return self.keys_loaded

    async def refresh(self) -> None:
        """Discovery (once it worked, its jwks_uri is kept) and the key set; raises on any failure."""
        uri = self._keys.jwks_uri
        if uri is None:
            url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
            document = await self._get_json(url)
            if not isinstance(document, dict) or document.get("issuer") != self.config.issuer:
                raise ValueError(f"{url} names another issuer than {self.config.issuer}")
            uri = document.get("jwks_uri")
            if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
                raise ValueError(f"{url} has no jwks_uri")
        key_set = await self._get_json(uri)
        if not isinstance(key_set, dict) or not isinstance(key_set.get("keys"), list):
            raise ValueError(f"{uri} is not a JSON Web Key Set (an object with a keys list)")
        found: dict[str, jwt.PyJWK] = {}
        for entry in key_set["keys"]:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or not entry.get("kid"):
                continue
            try:
                found[str(entry["kid"])] = jwt.PyJWK(entry)
            except (jwt.PyJWKError, jwt.InvalidKeyError):
                continue  # a key type or curve we do not take: another key may still do
        self._keys = _Keys(found, time.monotonic(), uri)
        log.info("oauth_keys_loaded", issuer=self.config.issuer, keys=len(found))

    async def _get_json(self, url: str) -> Any:
        """The JSON at ``url``: at most MAX_DOCUMENT_BYTES, within FETCH_TIMEOUT_S in all (not per read)."""
        with anyio.fail_after(FETCH_TIMEOUT_S):
            async with self._http().stream("GET", url) as answer:
                answer.raise_for_status()
                body = bytearray()
                async for chunk in answer.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise ValueError(f"{url} answered more than {MAX_DOCUMENT_BYTES} bytes")
        return json.loads(body)

    async def _key(self, kid: str) -> jwt.PyJWK | None:
        """The issuer's key ``kid``; refetched when unknown (at most every REFRESH_MIN_S) or stale."""
        keys = self._keys
        age = time.monotonic() - keys.fetched_at
        if kid in keys.keys and age < KEYS_MAX_AGE_S:
            return keys.keys[kid]
        async with self._lock:
            keys = self._keys
            age = time.monotonic() - keys.fetched_at
            if age >= REFRESH_MIN_S or (age >= KEYS_MAX_AGE_S):
                try:
                    await self.refresh()
                except _FETCH_FAILED as exc:
                    log.warning("oauth_keys_unavailable", issuer=self.config.issuer, error=str(exc)[:300])
                    self._keys = _Keys(keys.keys, time.monotonic(), keys.jwks_uri)  # no retry storm either
        if not self._keys.keys:
            raise TokenRefused("issuer-unavailable", "the issuer's keys could not be fetched", kid=kid)
        return self._keys.keys.get(kid)

    async def verify(self, token: str) -> Verified:
        """The token's identity, or TokenRefused saying why not (with the ``iss`` it claimed, read only then:
        an accepted token is decoded once)."""
        try:
            return await self._verify(token)
        except TokenRefused as refused:
            if len(token) <= MAX_TOKEN_BYTES:  # one that is not a JWT claims nothing: None
                iss = _claimed_issuer(token)
                refused.iss = iss[:MAX_CLAIMED] if iss is not None else None
            raise

    async def _verify(self, token: str) -> Verified:
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenRefused("malformed", f"the token is longer than {MAX_TOKEN_BYTES} bytes")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRefused("malformed", "the bearer token is not a JWT") from None
        kid, alg = header.get("kid"), header.get("alg")
        kid = kid if isinstance(kid, str) else None
        if alg not in self.config.algorithms:
            raise TokenRefused("alg-not-allowed", f"tokens signed with {str(alg)[:20]!r} are not accepted "
                               f"(allowed: {', '.join(self.config.algorithms)})", kid=kid)
        if kid is None:
            raise TokenRefused("unknown-key", "the token names no key (kid)")
        key = await self._key(kid)
        if key is None:
            raise TokenRefused("unknown-key", "the token's key (kid) is not one of the issuer's", kid=kid)
        try:
            claims = jwt.decode(
                token, key.key, algorithms=[alg], audience=self._audiences, issuer=self.config.issuer,
                leeway=LEEWAY_S, options={"require": ["exp", "iss", "aud"], "verify_signature": True},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRefused("expired", "the token has expired", kid=kid) from None
        except jwt.ImmatureSignatureError:
            raise TokenRefused("not-yet-valid", "the token is not valid yet (nbf or iat)", kid=kid) from None
        except jwt.InvalidAudienceError:
            raise TokenRefused("wrong-audience", f"the token was not issued for this server ({self.config.resource})",
                               kid=kid) from None
        except jwt.InvalidIssuerError:
            raise TokenRefused("wrong-issuer", "the token's issuer is not the configured one",
                               kid=kid) from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRefused("missing-claim", f"the token has no {exc.claim} claim", kid=kid) from None
        except jwt.InvalidSignatureError:
            raise TokenRefused("bad-signature", "the token's signature does not verify", kid=kid) from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise TokenRefused("malformed", "the token could not be read", kid=kid) from None
        verified = identity_of(claims, self.config)
        missing = [s for s in self.config.scopes if s not in verified.scopes]
        if missing:
            raise TokenRefused("insufficient-scope", f"the token lacks the scope {missing[0]!r}", kid=kid)
        if verified.dropped_groups:
            log.warning("oauth_groups_dropped", principal=verified.principal, dropped=verified.dropped_groups)
        return verified


def _claimed_issuer(token: str) -> str | None:
    """The ``iss`` an unverified token claims, for the refusal record (capped there); None if unreadable."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    iss = claims.get("iss") if isinstance(claims, dict) else None
    return iss if isinstance(iss, str) else None


def www_authenticate(config: OAuthConfig, refused: TokenRefused | None) -> str:
    """RFC 6750 / RFC 9728: where the metadata is; ``error="invalid_token"`` only when a token was sent."""
    parts = [f'resource_metadata="{config.metadata_url}"']
    if config.scopes:
        parts.append(f'scope="{" ".join(config.scopes)}"')
    if refused is not None:
        code = "insufficient_scope" if refused.rule == "insufficient-scope" else "invalid_token"
        parts.insert(0, f'error="{code}", error_description="{header_text(refused.message)}"')
    return "Bearer " + ", ".join(parts)


def header_text(text: str) -> str:
    """Pure: a sentence as an RFC 6750 quoted-string holds it: printable ASCII, no quote or backslash (a
    token's claimed values could bring anything, and a header is latin-1 at most)."""
    ascii_only = text.encode("ascii", "backslashreplace").decode("ascii")
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "'" if c == '"' else "?" for c in ascii_only)


def protected_resource_metadata(config: OAuthConfig) -> dict[str, Any]:
    """RFC 9728 section 2: what a client reads to find the authorization server."""
    doc: dict[str, Any] = {
        "resource": config.resource,
        "authorization_servers": [config.issuer],
        "bearer_methods_supported": ["header"],
        "resource_signing_alg_values_supported": list(config.algorithms),
    }
    if config.scopes:
        doc["scopes_supported"] = list(config.scopes)
    return doc

