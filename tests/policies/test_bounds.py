"""Bounds are pure: parsed from TOML, checked against a call's attributes."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsgate.policies import BoundAttrs, BoundsError, PolicyError, SubjectBounds, default_policy, load_policy
from opsgate.policies.bounds import DEFAULT_BOUNDS, check_bounds, storage_uri_problem
from opsgate.policies.bounds_file import DEFAULT_PROTECTED, bounds_lines, parse_bounds
from opsgate.policies.decider import pattern_meet
from opsgate.policies.loader import with_rules
from opsgate.tools.bounded import local_model, localize_storage, restored_deployment_attrs, restored_service_attrs
from opsgate.vocab.elements import count_elements

OPERATOR = SubjectBounds(max_replicas=10, allow_scale_to_zero=False, image_prefixes=("registry.example.com/",))


@pytest.mark.parametrize(
    ("attrs", "refused"),
    [
        ({"replicas": 10}, None),
        ({"replicas": 11}, "exceeds max_replicas 10"),
        ({"replicas": 0}, "scaling to zero"),
        ({"image": "registry.example.com/web:1"}, None),
        ({"image": "docker.io/evil/web:1"}, "not from an allowed registry"),
        ({}, None),
    ],
)
def test_check_bounds(attrs: dict[str, object], refused: str | None) -> None:
    reason = check_bounds("role:operator", OPERATOR, BoundAttrs.from_mapping(attrs))
    if refused is None:
        assert reason is None
    else:
        assert reason is not None and refused in reason and "role:operator" in reason


@pytest.mark.parametrize(
    "text",
    ['[subject."role:x"]\nmax_replicas = -1\n', '[subject."role:x"]\nmax_pods = 3\n', "[limits]\n", "[subject\n"],
)
def test_bad_bounds_files_are_refused(text: str) -> None:
    with pytest.raises(BoundsError):
        parse_bounds(Path("bounds.toml"), text.encode())


def test_a_bad_bounds_file_stops_the_policy_load(tmp_path: Path) -> None:
    (tmp_path / "policy.csv").write_text("p, role:viewer, *, *, read, allow\n")
    (tmp_path / "bounds.toml").write_text('[subject."role:viewer"]\nmax_replicas = "many"\n')
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path / "policy.csv")
    assert "bounds.toml" in str(info.value) and "max_replicas" in str(info.value)


def test_shipped_bounds_limit_operators() -> None:
    assert default_policy().bounds["role:operator"].max_replicas == 10


# --------------------------------------------------------------------------- every bound at, below and above its limit

LIMITS = SubjectBounds(
    max_replicas=10,
    max_replicas_change=3,
    allow_scale_to_zero=False,
    image_prefixes=("registry.example.com/", "docker.io/library/"),
    models=("iris", "fraud-*"),
    max_input_elements=8,
    rate_limit_per_minute=5,
)


@pytest.mark.parametrize(
    ("attrs", "refused"),
    [
        # max_replicas 10 (current 9 so the change bound stays out of the way)
        ({"replicas": 9, "current_replicas": 9}, None),
        ({"replicas": 10, "current_replicas": 9}, None),
        ({"replicas": 11, "current_replicas": 9}, "replicas 11 exceeds max_replicas 10"),
        # max_replicas_change 3, up and down from 5
        ({"replicas": 7, "current_replicas": 5}, None),
        ({"replicas": 8, "current_replicas": 5}, None),
        ({"replicas": 9, "current_replicas": 5}, "changing replicas from 5 to 9 (by 4) exceeds max_replicas_change 3"),
        ({"replicas": 3, "current_replicas": 5}, None),
        ({"replicas": 2, "current_replicas": 5}, None),
        ({"replicas": 1, "current_replicas": 5}, "from 5 to 1 (by 4)"),
        ({"replicas": 3, "current_replicas": 0}, None),  # a create: from nothing
        ({"replicas": 4, "current_replicas": 0}, "from 0 to 4 (by 4)"),
        # unknown current count: refused, never guessed
        ({"replicas": 5}, "cannot be checked: the current replica count is unknown"),
        ({"replicas": 5, "current_replicas": None}, "cannot be checked"),
        ({"replicas": 5, "current_replicas": True}, "cannot be checked"),
        # allow_scale_to_zero = false
        ({"replicas": 1, "current_replicas": 1}, None),
        ({"replicas": 0, "current_replicas": 1}, "scaling to zero is not allowed"),
        # image_prefixes
        ({"image": "registry.example.com/web:1"}, None),
        ({"image": "docker.io/library/nginx:1.27"}, None),
        ({"image": "registry.example.com.evil.io/web:1"}, "not from an allowed registry"),
        ({"image": "docker.io/evil/web:1"}, "not from an allowed registry"),
        # models: names and glob patterns, case-sensitive
        ({"model": "iris"}, None),
        ({"model": "fraud-v2"}, None),
        ({"model": "fraud"}, "model 'fraud' is not one role:operator may call (allowed: iris, fraud-*)"),
        ({"model": "IRIS"}, "is not one"),
        ({"model": "iris2"}, "is not one"),
        # max_input_elements 8
        ({"model": "iris", "input_elements": 7}, None),
        ({"model": "iris", "input_elements": 8}, None),
        ({"model": "iris", "input_elements": 9}, "input of 9 elements exceeds max_input_elements 8"),
        # a call carrying none of the attributes is not touched
        ({}, None),
        ({"replicas": None, "image": "registry.example.com/web:2"}, None),
    ],
)
def test_each_bound_at_below_and_above(attrs: dict[str, object], refused: str | None) -> None:
    reason = check_bounds("role:operator", LIMITS, BoundAttrs.from_mapping(attrs))
    if refused is None:
        assert reason is None
    else:
        assert reason is not None and refused in reason and "role:operator" in reason, reason


def test_no_bounds_limit_nothing() -> None:
    free = SubjectBounds()
    for attrs in ({"replicas": 10_000}, {"replicas": 0}, {"replicas": 5}, {"image": "x"}, {"model": "any"},
                  {"input_elements": 10**9}):
        assert check_bounds("role:admin", free, BoundAttrs.from_mapping(attrs)) is None


@pytest.mark.parametrize(
    ("inputs", "count"),
    [
        ({"features": [[5.1, 3.5, 1.4, 0.2]]}, 4),
        ({"a": [[1, 2], [3, 4]], "b": 7}, 5),
        ({"x": []}, 0),
        ({}, 0),
        (3.0, 1),
    ],
)
def test_count_input_elements(inputs: object, count: int) -> None:
    assert count_elements(inputs) == count


def test_count_input_elements_survives_deep_nesting() -> None:
    deep: list[object] = [1.0]
    for _ in range(50_000):
        deep = [deep]
    assert count_elements({"x": deep}) == 1


def test_all_bounds_parse_and_errors_name_the_line() -> None:
    text = (
        "# bounds\n"
        '[subject."role:operator"]\n'
        "max_replicas = 10\n"
        "max_replicas_change = 2\n"
        "allow_scale_to_zero = false\n"
        'image_prefixes = ["registry.example.com/"]\n'
        'models = ["iris", "fraud-*"]\n'
        "max_input_elements = 4096\n"
        "rate_limit_per_minute = 30\n"
    )
    parsed = parse_bounds(Path("bounds.toml"), text.encode())["role:operator"]
    assert parsed.max_replicas_change == 2 and parsed.models == ("iris", "fraud-*")
    assert parsed.max_input_elements == 4096 and parsed.rate_limit_per_minute == 30
    assert bounds_lines(text)[("role:operator", None)] == 2
    assert bounds_lines(text)[("role:operator", "models")] == 7

    bad = text.replace("rate_limit_per_minute = 30", "rate_limit_per_minute = 0")
    with pytest.raises(BoundsError) as info:
        parse_bounds(Path("bounds.toml"), bad.encode())
    assert info.value.line == 9 and "rate_limit_per_minute" in info.value.message
    bad = text.replace('models = ["iris", "fraud-*"]', 'models = ["iris", ""]')
    with pytest.raises(BoundsError, match="must not be empty") as info:
        parse_bounds(Path("bounds.toml"), bad.encode())
    assert info.value.line == 7
    with pytest.raises(BoundsError) as info:
        parse_bounds(Path("bounds.toml"), b'[subject."x"]\nmax_replicas = 1\nmax_replicas = [\n')
    assert info.value.line is not None


@pytest.mark.parametrize(
    "text",
    [
        '[subject."role:x"]\nmax_replicas_change = -1\n',
        '[subject."role:x"]\nmax_input_elements = -1\n',
        '[subject."role:x"]\nrate_limit_per_minute = 0\n',
        '[subject."role:x"]\nread_rate_limit_per_minute = 0\n',
        '[subject."role:x"]\nread_rate_limit_per_minute = "many"\n',
        '[subject."role:x"]\nread_rate_limits_per_minute = 600\n',
        '[subject."role:x"]\nmodels = "iris"\n',
        '[subject."role:x"]\nimage_prefixes = [""]\n',
    ],
)
def test_bad_new_bounds_are_refused(text: str) -> None:
    with pytest.raises(BoundsError):
        parse_bounds(Path("bounds.toml"), text.encode())


def test_a_bad_bounds_file_names_its_line_in_the_policy_error(tmp_path: Path) -> None:
    (tmp_path / "policy.csv").write_text("p, role:viewer, *, *, read, allow\n")
    (tmp_path / "bounds.toml").write_text('# b\n[subject."role:viewer"]\nmodels = ["iris"]\nmax_replicas = -3\n')
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path / "policy.csv")
    assert info.value.line == 4
    assert str(info.value).startswith(f"{tmp_path / 'bounds.toml'}:4: ")


def test_shipped_bounds_rate_limit_operators() -> None:
    operator = default_policy().bounds["role:operator"]
    assert operator.rate_limit_per_minute == 30
    assert operator.max_replicas_change is None  # needs the gate to know current replicas
    # reads that leave the server: every role reads through role:viewer's rule (admins through their own)
    assert default_policy().bounds["role:viewer"].read_rate_limit_per_minute == 600


# --------------------------------------------------------------------------- issue 15 items 8, 9, 10, 15, 16 (pure)


def test_min_replicas_zero_is_scaling_to_zero() -> None:
    """Item 9: both ends of an InferenceService's range are bounded."""
    reason = check_bounds("role:operator", OPERATOR, BoundAttrs(replicas=3, min_replicas=0))
    assert reason is not None and "min_replicas 0" in reason and "allow_scale_to_zero" in reason
    assert check_bounds("role:operator", OPERATOR, BoundAttrs(replicas=3, min_replicas=1)) is None
    assert check_bounds("role:admin", DEFAULT_BOUNDS, BoundAttrs(replicas=3, min_replicas=0)) is None


@pytest.mark.parametrize(
    ("uri", "prefixes", "refused"),
    [
        ("iris", (), None),  # a model name: the models folder
        ("http://169.254.169.254/latest/meta-data/", (), "needs storage_uri_prefixes"),
        ("gopher://x:70/_", ("gs://m/",), "not under an allowed prefix"),
        ("gs://m/iris", ("gs://m/",), None),
        ("gs://m-evil/iris", ("gs://m/",), "not under an allowed prefix"),
        ("gs://m/../other/iris", ("gs://m/",), "dot segment"),
        ("gs://m/%2e%2e/other", ("gs://m/",), "dot segment"),
        ("s3://any/thing", ("s3://",), None),
    ],
)
def test_storage_uri_bound(uri: str, prefixes: tuple[str, ...], refused: str | None) -> None:
    """Item 10: a URI with a scheme needs a prefix the subject names; the message never quotes the URI."""
    reason = storage_uri_problem("role:x", SubjectBounds(storage_uri_prefixes=prefixes), uri)
    if refused is None:
        assert reason is None
    else:
        assert reason is not None and refused in reason and uri not in reason


def test_a_bare_storage_name_is_bounded_by_models() -> None:
    """Item 10: the model a service serves, not only its name, is checked against ``models``."""
    bounds = SubjectBounds(models=("iris",))
    assert check_bounds("role:x", bounds, BoundAttrs(model="iris", storage_uri="iris")) is None
    reason = check_bounds("role:x", bounds, BoundAttrs(model="iris", storage_uri="fraud"))
    assert reason is not None and "storage_uri" in reason


@pytest.mark.parametrize("prefix", ["gs://bucket", "https://models.example.com", "https://u:p@h/", "gs://", ""])
def test_storage_uri_prefixes_must_end_their_host(prefix: str) -> None:
    """Item 10: a prefix without "/" after its host would match lookalike hosts; the lint refuses it."""
    text = f'[subject."role:x"]\nstorage_uri_prefixes = ["{prefix}"]\n'
    if prefix == "gs://":
        assert parse_bounds(Path("bounds.toml"), text.encode())["role:x"].storage_uri_prefixes == ("gs://",)
        return
    with pytest.raises(BoundsError, match="storage_uri_prefixes"):
        parse_bounds(Path("bounds.toml"), text.encode())


def test_local_file_uris_count_as_the_models_folder(tmp_path: Path) -> None:
    """Item 10: ``file://`` inside the models folder is a model name; climbing out is not."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "iris.onnx").write_bytes(b"")
    (tmp_path / "models" / "out.onnx").symlink_to("/etc/passwd")
    models = tmp_path / "models"
    assert local_model(f"file://{models}/iris.onnx", models) == "iris"
    assert local_model(f"file://{models}/../models/iris.onnx", models) is None
    assert local_model(f"file://{models}/%2e%2e/x.onnx", models) is None
    assert local_model(f"file://{models}/out.onnx", models) is None, "a symlink pointing elsewhere"
    assert local_model("file:///etc/passwd", models) is None
    assert localize_storage(BoundAttrs(storage_uri=f"file://{models}/iris.onnx"), models) == BoundAttrs(
        storage_uri="iris")


def test_rollback_attrs_are_what_the_rollback_changes() -> None:
    """Item 15: a rollback is bounded by the images, replicas and storage URI it restores, not by what stays."""
    def template(*images: str) -> dict[str, object]:
        return {"spec": {"containers": [{"name": f"c{i}", "image": im} for i, im in enumerate(images)]}}

    assert restored_deployment_attrs(template("r/a:2"), template("evil/a:1")) == BoundAttrs(images=("evil/a:1",))
    assert restored_deployment_attrs(template("evil/a:1", "r/b:2"), template("evil/a:1", "r/b:1")) == BoundAttrs(
        images=("r/b:1",))
    now = {"minReplicas": 1, "maxReplicas": 2, "model": {"storageUri": "iris"}}
    back = {"minReplicas": 0, "maxReplicas": 2, "model": {"storageUri": "http://x/y"}}
    attrs = restored_service_attrs(now, back)
    assert attrs == BoundAttrs(replicas=2, current_replicas=2, min_replicas=0, storage_uri="http://x/y")
    assert restored_service_attrs(now, {**now, "canaryTrafficPercent": 0}) == BoundAttrs()
    reason = check_bounds("role:operator", OPERATOR, attrs)
    assert reason is not None and "allow_scale_to_zero" in reason


def test_a_policy_without_bounds_protects_the_cluster_namespaces(tmp_path: Path) -> None:
    """Item 8: no bounds.toml, or one without [protected], keeps the default protection; only
    ``namespaces = []`` turns it off, and the note says which file applies."""
    csv = tmp_path / "my.csv"
    csv.write_text("g, carol, role:admin, *\np, role:admin, *, *, *, allow\n")
    lone = load_policy(csv)
    assert lone.protected == DEFAULT_PROTECTED and lone.bounds_path is None
    assert lone.decide("carol", "kube-system", "deploy", "write").protected == "kube-system"
    assert "no bounds.toml" in lone.bounds_note()
    (tmp_path / "bounds.toml").write_text('[subject."role:admin"]\nmax_replicas = 3\n')
    assert load_policy(csv).protected == DEFAULT_PROTECTED
    (tmp_path / "bounds.toml").write_text("[protected]\nnamespaces = []\n")
    off = load_policy(csv)
    assert off.protected == () and off.decide("carol", "kube-system", "deploy", "write").allowed
    assert str(tmp_path / "bounds.toml") in off.bounds_note()


def test_effective_grants_narrow_each_rule_by_its_role_chain() -> None:
    """Item 16: a grant holds where its own pattern and every g line on the way meet."""
    assert pattern_meet("*", "team-*") == "team-*"
    assert pattern_meet("team-*", "team-a") == "team-a"
    assert pattern_meet("team-*", "prod") is None
    assert pattern_meet("team-a-*", "team-*") == "team-a-*"
    policy = with_rules(
        default_policy(), [(1, "g, alice, role:operator, team-*"), (2, "p, alice, team-x, *, write, deny")],
        Path("t.table"))
    grants = {(g.rule.fields[3], g.rule.fields[4]): g for g in policy.effective_grants("alice")}
    assert grants[("write", "allow")].namespaces == "team-*"
    assert [link.source for link in grants[("write", "allow")].via] == ["t.table:1"]
    assert grants[("read", "allow")].namespaces == "*"
    assert policy.allowed_in("alice", "deploy", "write") == ["team-* (except team-x)"]
    assert policy.allowed_in("nobody", "deploy", "write") == []


# --------------------------------------------------------------------------- the typed contract (issue 16)


def test_bound_attrs_tell_only_what_they_set() -> None:
    attrs = BoundAttrs(replicas=3, images=("r/a:1",))
    assert attrs.given() == {"replicas", "images"}
    assert BoundAttrs().given() == frozenset()
    assert BoundAttrs(current_replicas=0).given() == {"current_replicas"}, "0 replicas now is a fact, not nothing"
    assert attrs.but(BoundAttrs(current_replicas=2)) == BoundAttrs(replicas=3, images=("r/a:1",), current_replicas=2)
    assert attrs.but(BoundAttrs()) == attrs


def test_a_tables_attributes_are_read_as_leniently_as_before() -> None:
    """A table's JSON: a value of the wrong type tells nothing (true is not a count), ``image`` joins ``images``."""
    read = BoundAttrs.from_mapping(
        {"replicas": True, "current_replicas": 2, "image": "r/a", "images": ["r/b", 3], "model": 5, "typo": 1})
    assert read == BoundAttrs(current_replicas=2, images=("r/a", "r/b"))
    assert BoundAttrs.from_mapping({"url_override": "yes"}) == BoundAttrs(), "only true opts in"


def test_every_file_error_has_one_shape() -> None:
    from opsgate.policies import SourceError, TableError

    for cls in (PolicyError, BoundsError, TableError):
        exc = cls(Path("f.toml"), 3, "bad")
        assert isinstance(exc, SourceError) and str(exc) == "f.toml:3: bad" and exc.message == "bad"
        assert str(cls(Path("f.toml"), None, "bad")) == "f.toml: bad"


def test_each_tool_tells_the_policy_only_what_its_spec_declares() -> None:
    """The lint reads ToolSpec.bounded, so it must hold every field a tool's arguments give; the gate refuses
    to pass on one it does not declare, so the declaration cannot drift as TOOL_ATTRS did."""
    from opsgate.server.catalog import server_tools

    specs = {spec.name: spec for spec in server_tools()}
    samples: dict[str, dict[str, object]] = {
        "infer": {"model": "iris", "inputs": {"features": [[1.0, 2.0]]}},
        "deploy": {"name": "web", "namespace": "d", "image": "r/web:1", "replicas": 2},
        "scale": {"name": "iris", "namespace": "d", "kind": "InferenceService", "min_replicas": 0, "max_replicas": 3},
        "deploy_model": {"name": "iris", "namespace": "d", "storage_uri": "iris", "min_replicas": 1, "max_replicas": 2},
        "kserve_infer": {"name": "iris", "namespace": "d", "inputs": {"x": [1]}, "url": "http://localhost:8080"},
    }
    for name, sample in samples.items():
        spec = specs[name]
        assert spec.bound_attrs is not None, name
        told = spec.bound_attrs(spec.args_model.model_validate(sample))
        assert told.given() and spec.told(told) is told, name
    assert {name for name, spec in specs.items() if spec.bound_attrs is not None} == set(samples)
    assert "storage_uri" in specs["rollback"].bounded and "storage_uri" in specs["kserve_infer"].bounded
    with pytest.raises(RuntimeError, match="images"):
        specs["scale"].told(BoundAttrs(replicas=2, images=("r/x:1",)))
