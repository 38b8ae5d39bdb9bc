"""``opsgate audit export --format ocsf`` and ``opsgate audit verify --ocsf``, on the log of a real session.

The events are checked against OCSF 1.3.0 as the ``pydantic-ocsf`` package models it (built from the
schema it ships), and, for the attributes that package leaves out (``includes/classification.json`` and
``includes/occurrence.json`` of ocsf-schema 1.3.0: class_uid, type_uid, time, ...), against the schema's
own dictionary: every attribute must be one the schema defines, with an allowed enum value.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

import anyio
import pytest
from ocsf.v1_3_0.events import ApiActivity
from pydantic import BaseModel

from opsgate.audit.chain import canonical, record_hash
from opsgate.audit.ocsf import CREATE, OTHER, READ, UPDATE, activity_of, check_export, to_ocsf
from opsgate.sandbox import SandboxCluster
from tests.harness import serve_on

NS = "team-a"
IMAGE = "registry.example.com/web:1"
SCHEMA = json.loads(files("ocsf").joinpath("schemas/v1_3_0.json").read_text())
# ocsf-schema 1.3.0 includes/classification.json and includes/occurrence.json (base_event's $include),
# which the package's models do not resolve: allowed at the top level, each checked against the dictionary.
INCLUDED = {"activity_name", "category_uid", "category_name", "class_uid", "class_name", "type_uid", "type_name",
            "time", "timezone_offset", "duration", "start_time", "end_time", "count"}


def opsgate(*argv: str) -> subprocess.CompletedProcess[str]:
    """The real command line, as a reviewer runs it."""
    return subprocess.run([sys.executable, "-m", "opsgate.server", "audit", *argv], capture_output=True, text=True,
                          timeout=60, check=False)


async def _session(folder: Path) -> None:
    with SandboxCluster(rollout_delay=0.05) as cluster:
        from kubernetes import client, config

        api = config.new_client_from_config_dict(cluster.kubeconfig())
        client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
        async with serve_on(cluster, folder, "alice", f"g, alice, role:operator, {NS}") as s:
            await s.call("whoami")
            await s.call("deploy", {"name": "web", "namespace": NS, "image": IMAGE, "replicas": 2})
            await s.call("scale", {"name": "web", "namespace": NS, "replicas": 50})  # over max_replicas: bound
            await s.call("scale", {"name": "web", "namespace": NS, "replicas": 3})
            await s.call("deploy", {"name": "web", "namespace": "prod", "image": IMAGE})
            await s.call("list_workloads", {"namespace": NS})
            await s.call("scale", {"name": "Bad Name!", "namespace": NS, "replicas": 1})  # invalid


@pytest.fixture(scope="module")
def session_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The audit log of one real server session: reads, writes, a policy denial, a bound refusal, an invalid call."""
    folder = tmp_path_factory.mktemp("ocsf")
    anyio.run(_session, folder)
    return folder / "audit.jsonl"


@pytest.fixture(scope="module")
def export(session_log: Path) -> Path:
    out = session_log.parent / "export.jsonl"
    done = opsgate("export", str(session_log), "--format", "ocsf", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # --out: the events go to the file, nothing to stdout
    return out


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line]


def unknown_attributes(model: Any, where: str = "") -> Iterator[str]:
    """Attributes the package's model did not know (it allows extras), except under ``unmapped``/json data."""
    if isinstance(model, BaseModel):
        for key in model.model_extra or {}:
            yield f"{where}.{key}"
        for name in type(model).model_fields:
            if name not in ("unmapped", "data"):
                yield from unknown_attributes(getattr(model, name), f"{where}.{name}")
    elif isinstance(model, list):
        for index, item in enumerate(model):
            yield from unknown_attributes(item, f"{where}[{index}]")


def enum_of(name: str) -> set[int]:
    return {int(k) for k in SCHEMA["dictionary"]["attributes"][name].get("enum", {})}


def test_each_record_is_an_ocsf_api_activity_event(session_log: Path, export: Path) -> None:
    found, logged = events(export), records(session_log)
    assert len(found) == len(logged) > 10
    api_activity = SCHEMA["events"]["api_activity"]
    activities = {int(k) for k in api_activity["attributes"]["activity_id"]["enum"]} | {0, 99}
    for event, record in zip(found, logged, strict=True):
        model = ApiActivity.model_validate(event)  # required attributes, type_uid = class_uid * 100 + activity_id
        extra = [path for path in unknown_attributes(model) if path.lstrip(".") not in INCLUDED]
        assert extra == [], extra
        assert set(INCLUDED) <= set(SCHEMA["dictionary"]["attributes"])
        assert (event["class_uid"], event["category_uid"]) == (6003, 6)
        assert event["type_uid"] == 6003 * 100 + event["activity_id"]
        assert event["activity_id"] in activities
        assert event["status_id"] in enum_of("status_id") and event["severity_id"] in enum_of("severity_id")
        assert event["metadata"]["version"] == "1.3.0" and event["metadata"]["product"]["name"] == "opsgate"
        assert event["metadata"]["product"]["vendor_name"]
        assert abs(event["time"] - datetime.fromisoformat(record["time"]).timestamp() * 1000) < 1
        assert event["actor"]["user"]["name"] == record["principal"] == "alice"
        assert event["metadata"]["sequence"] == record["seq"]
        kept = event["unmapped"]["opsgate"]
        assert (kept["seq"], kept["prev"], kept["hash"]) == (record["seq"], record["prev"], record["hash"])
        assert json.loads(kept["record"]) == record
        if "call_id" in record:
            assert event["api"]["request"]["uid"] == record["call_id"]
            assert event["api"]["operation"] == record["tool"]


def test_calls_map_to_activity_status_and_resources(export: Path) -> None:
    by = {(e["api"]["operation"], e["unmapped"]["opsgate"]["stage"], e.get("status_code")): e for e in events(export)}
    created = by[("deploy", "outcome", "ok")]
    assert created["activity_id"] == CREATE and created["type_name"] == "API Activity: Create"
    assert created["api"]["response"]["data"]["action"] == "created" and created["status"] == "Success"
    asked = by[("deploy", "decision", "allow")]  # the decision names the object; its outcome carries it too
    assert asked["resources"] == created["resources"] == [{"type": "Deployment", "name": "web", "namespace": NS}]
    assert asked["metadata"]["correlation_uid"] == created["metadata"]["correlation_uid"]
    scaled = by[("scale", "outcome", "ok")]
    assert scaled["activity_id"] == UPDATE and scaled["resources"][0]["name"] == "web"
    assert scaled["api"]["response"]["data"]["replicas"] == {"before": 2, "after": 3}
    denied = by[("deploy", "decision", "deny")]
    assert (denied["status_id"], denied["status"], denied["severity_id"]) == (2, "Failure", 3)
    assert denied["actor"]["authorizations"][0]["decision"] == "deny"
    assert denied["resources"][0]["namespace"] == "prod"
    bound = by[("scale", "decision", "deny")]
    assert "max_replicas" in bound["status_detail"]
    assert bound["actor"]["authorizations"][0]["policy"]["name"].startswith("p, role:operator")
    assert bound["unmapped"]["opsgate"]["decision"]["bound"]
    invalid = by[("scale", "decision", "invalid")]
    assert invalid["status"] == "Failure" and invalid["unmapped"]["opsgate"]["decision"]["errors"][0]["field"] == "name"
    assert by[("whoami", "decision", "allow")]["activity_id"] == READ
    start = next(e for e in events(export) if e["unmapped"]["opsgate"]["stage"] == "start")
    assert start["activity_id"] == OTHER and start["api"]["operation"] == "start"


def test_activity_of_follows_the_tool() -> None:
    assert activity_of({"stage": "decision", "tool": "deploy_model", "verb": "write"}) == CREATE
    assert activity_of({"stage": "outcome", "tool": "rollback"}) == UPDATE
    assert activity_of({"stage": "decision", "tool": "future_write", "verb": "write"}) == UPDATE
    assert activity_of({"stage": "decision", "tool": "nope", "verb": "unknown"}) == OTHER
    assert activity_of({"stage": "outcome", "tool": "kserve_infer"}) == READ
    assert activity_of({"stage": "policy_reload"}) == OTHER


def test_export_verifies_against_the_signed_checkpoints(session_log: Path, export: Path) -> None:
    folder = session_log.parent
    done = opsgate("verify", "--ocsf", str(export), "--checkpoints", str(folder / "audit.jsonl.checkpoints"),
                   "--hmac-key", str(folder / "audit.jsonl.hmac-key"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"ok: {len(records(session_log))} records (seq 1..")
    assert "1 of its records match a signed checkpoint" in done.stdout
    plain = opsgate("verify", "--ocsf", str(export))
    assert plain.returncode == 0 and "checkpoints  not checked" in plain.stdout


def tampered(export: Path, name: str, change: Any) -> Path:
    lines = export.read_text().splitlines()
    change(lines)
    out = export.parent / name
    out.write_text("".join(f"{line}\n" for line in lines))
    return out


def rewrite_event(lines: list[str], index: int, edit: Any) -> None:
    event = json.loads(lines[index])
    edit(event)
    lines[index] = json.dumps(event)


def edit_record(event: dict[str, Any], rehash: bool) -> None:
    """Make a record say mallory; ``rehash``: a forger who also re-hashes it and re-derives the whole event."""
    record = json.loads(event["unmapped"]["opsgate"]["record"])
    record["principal"] = "mallory"
    if rehash:
        record["hash"] = record_hash(record)
    text = canonical(record).decode()
    forged = to_ocsf(record, text) if rehash else {**event, "unmapped": {"opsgate": {"record": text}}}
    event.clear()
    event.update(forged)


@pytest.mark.parametrize(
    ("name", "change", "problem"),
    [
        ("mapped-field", lambda ls: rewrite_event(ls, 3, lambda e: e["actor"]["user"].update(name="mallory")),
         "event-mismatch"),
        ("record-edited", lambda ls: rewrite_event(ls, 3, lambda e: edit_record(e, rehash=False)), "hash-mismatch"),
        ("record-rehashed", lambda ls: rewrite_event(ls, 3, lambda e: edit_record(e, rehash=True)), "prev-mismatch"),
        ("record-removed", lambda ls: ls.pop(4), "seq-gap"),
        ("records-swapped", lambda ls: ls.insert(2, ls.pop(3)), "seq-gap"),
        ("not-json", lambda ls: ls.__setitem__(2, ls[2][:-5]), "not-json"),
    ],
)
def test_a_tampered_export_fails(export: Path, name: str, change: Any, problem: str) -> None:
    bad = tampered(export, f"{name}.jsonl", change)
    done = opsgate("verify", "--ocsf", str(bad))
    assert done.returncode == 1, done.stdout
    assert done.stdout.startswith(f"DAMAGED: {bad} line ") and f": {problem}: " in done.stdout, done.stdout


def test_a_cut_export_is_not_vouched_for(session_log: Path, export: Path) -> None:
    """The chain alone cannot show records cut off the end; the signed stop checkpoint does."""
    folder = session_log.parent
    cut = tampered(export, "cut.jsonl", lambda ls: ls.pop())
    done = opsgate("verify", "--ocsf", str(cut), "--checkpoints", str(folder / "audit.jsonl.checkpoints"),
                   "--hmac-key", str(folder / "audit.jsonl.hmac-key"))
    assert done.returncode == 1 and done.stdout.startswith("UNVERIFIED: no signed checkpoint"), done.stdout
    forged_key = folder / "other.key"
    forged_key.write_text("ab" * 32 + "\n")
    wrong = opsgate("verify", "--ocsf", str(export), "--checkpoints", str(folder / "audit.jsonl.checkpoints"),
                    "--hmac-key", str(forged_key))
    assert wrong.returncode == 1 and "unknown-key" in wrong.stdout, wrong.stdout


def test_a_time_range_is_a_run_of_the_chain_that_verifies_alone(session_log: Path, export: Path) -> None:
    logged = records(session_log)
    since = logged[3]["time"]
    done = opsgate("export", str(session_log), "--since", since)
    assert done.returncode == 0, done.stderr
    part = [json.loads(line) for line in done.stdout.splitlines()]
    assert part[0]["metadata"]["sequence"] == logged[3]["seq"] and len(part) == len(logged) - 3
    path = export.parent / "part.jsonl"
    path.write_text(done.stdout)
    check = check_export(path.read_bytes().splitlines())
    assert check.ok and check.first_seq == 4 and check.last_seq == logged[-1]["seq"], check
    verified = opsgate("verify", "--ocsf", str(path))
    assert verified.returncode == 0 and "a run of the chain" in verified.stdout, verified.stdout
    empty = opsgate("export", str(session_log), "--until", "2000-01-01T00:00:00Z")
    assert empty.returncode == 0 and empty.stdout == ""


def test_export_to_a_file_is_whole_or_nothing(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    done = opsgate("export", str(tmp_path / "missing.jsonl"), "--out", str(out))
    assert done.returncode == 2 and "cannot export" in done.stderr
    assert list(tmp_path.iterdir()) == []  # neither the file nor a partial one


def test_server_refusals_are_failures() -> None:
    """A refused bearer token (the HTTP server) and a rejected input line: Failure, with their rule."""
    token = {"v": 2, "stage": "token_refused", "time": "2026-01-01T00:00:00.000000Z", "principal": "-",
             "principal_source": "oauth", "rule": "expired", "message": "the token expired", "seq": 5,
             "prev": "0" * 64, "hash": "1" * 64}
    event = to_ocsf(token, "{}")
    assert (event["status"], event["status_code"]) == ("Failure", "expired")
    assert event["status_detail"] == "the token expired"
    assert event["severity_id"] == 3 and "user" not in event["actor"]
    rejected = {**token, "stage": "input_rejected", "rule": "line-too-long", "message": None}
    assert (to_ocsf(rejected, "{}")["status_code"], to_ocsf(rejected, "{}")["severity_id"]) == ("line-too-long", 2)
    ApiActivity.model_validate(event)
