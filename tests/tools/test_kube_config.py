"""The client configuration Kube builds: the proxy from the environment still applies, and a request no
longer re-reads the environment (the kubeconfig loader's refresh hook re-assigns the host every request)."""

from __future__ import annotations

from typing import Any

import pytest

from opsgate.tools.kube import Kube

SERVER = "https://cluster.example:6443"


def token_kubeconfig(server: str = SERVER) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }


def test_the_environment_proxy_applies_and_a_new_host_resolves_it_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://plain-proxy.example:3128")
    cfg = Kube.from_kubeconfig_dict(token_kubeconfig()).connect().configuration
    assert (cfg.host, cfg.proxy) == (SERVER, "http://proxy.example:3128")
    assert cfg.get_api_key_with_prefix("BearerToken") == "Bearer t0ken"  # runs the loader's refresh hook
    assert (cfg.host, cfg.proxy) == (SERVER, "http://proxy.example:3128")
    cfg.host = "http://other.example:8080"
    assert (cfg.host, cfg.proxy) == ("http://other.example:8080", "http://plain-proxy.example:3128")


def test_a_request_does_not_read_the_proxy_settings_again(monkeypatch: pytest.MonkeyPatch) -> None:
    import kubernetes.client.configuration as configuration

    cfg = Kube.from_kubeconfig_dict(token_kubeconfig()).connect().configuration
    from urllib.request import getproxies as real

    reads: list[dict[str, str]] = []

    def getproxies() -> dict[str, str]:
        reads.append(real())
        return reads[-1]

    monkeypatch.setattr(configuration, "getproxies", getproxies)
    for _ in range(3):
        assert cfg.get_api_key_with_prefix("BearerToken") == "Bearer t0ken"
    assert reads == [] and cfg.host == SERVER
