"""A test OIDC issuer: keys made here with ``cryptography``, discovery and JWKS served over HTTP on loopback.

What Keycloak, Dex, Entra ID or Okta publish for a resource server, and no more: the discovery document
(``issuer``, ``jwks_uri``) and the key set. Tokens are minted with PyJWT; ``raw`` builds the ones no
library would (``alg: none``). The server counts key-set fetches, so a test can see the cache work.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer:
    """An OIDC issuer on 127.0.0.1: ``url``, ``mint(...)``; keys ``rsa`` (kid r1), ``ec`` (e1), ``ed`` (d1)."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # not published
        self.published: dict[str, Any] = {"r1": self.rsa, "e1": self.ec, "d1": self.ed}
        self.jwks_fetches = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/keys",
                            "authorization_endpoint": f"{issuer.url}/auth", "token_endpoint": f"{issuer.url}/token",
                            "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"]}
                elif self.path == "/keys":
                    issuer.jwks_fetches += 1
                    body = issuer.jwks()
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Issuer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, key in self.published.items():
            jwk = json.loads(jwt.algorithms.get_default_algorithms()[_alg(key)].to_jwk(key.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": _alg(key)})
        return {"keys": keys}

    def public_pem(self) -> bytes:
        return self.rsa.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)

    def claims(self, audience: str, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {"iss": self.url, "sub": "alice", "aud": audience, "iat": now, "nbf": now, "exp": now + 600,
                  "groups": ["platform"], "azp": "test-client", "email": "alice@example.com"}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(self, audience: str, *, kid: str = "r1", key: Any = None, alg: str | None = None,
             **overrides: Any) -> str:
        """A signed token for ``audience``; ``key``/``alg`` default to the published key ``kid``."""
        key = key if key is not None else self.published.get(kid, self.rsa)
        return jwt.encode(self.claims(audience, **overrides), key, algorithm=alg or _alg(key), headers={"kid": kid})


def raw(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A token as bytes on the wire, for shapes no JWT library signs (``alg: none``)."""
    return ".".join([_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()), _b64(signature)])


def _alg(key: Any) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ES256"
    return "EdDSA"
