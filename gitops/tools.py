"""deploy, scale, rollback and deploy_model in GitOps mode: the same arguments, a commit instead of a write.

Each computes the object it wants with the tools' own pure functions (``updated_deployment``,
``desired_predictor``...) from the object as Git renders it, so a commit says what a direct write would
have done; then it writes that into the manifests: a kustomization's ``images:``/``replicas:`` entries
when the folder is a kustomize base or overlay and only those change, else the object's own YAML document
(a new file, listed in the kustomization's ``resources:``, when Git has none yet).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from opsgate.policies.bounds import BoundAttrs
from opsgate.tools.bounded import enforce_bounds
from opsgate.tools.context import CallContext
from opsgate.tools.errors import ToolError
from opsgate.tools.kserve.deploy import DeployModelArgs, deploy_notes, desired_predictor, new_inference_service
from opsgate.tools.kserve.services import GROUP, KIND, MODE_ANNOTATION, PLURAL, VERSION, mode_of, predictor_of
from opsgate.tools.kserve.status import replica_ceiling
from opsgate.tools.kube import Kube
from opsgate.tools.structs.objects import CHANGE_CAUSE_ANNOTATION, change_cause, images_of, spec_of
from opsgate.tools.structs.patches import main_container_index, new_deployment, updated_deployment
from opsgate.tools.workload_types import RollbackArgs, ScaleArgs
from opsgate.tools.workloads import DeployArgs

from .change import DryRun, ObjectRef, Planned, find_change, make_change
from .manifests import (
    YamlFile,
    add_resource,
    find_manifest,
    kustomization_file,
    merge_into,
    plain,
    set_image_entry,
    set_replicas_entry,
)
from .models import GitOpsResult, GitOpsTarget

APPLY_PATCH: Final = "application/apply-patch+yaml"
FIELD_MANAGER: Final = "opsgate"
APPS: Final = "apps"


def _fail(message: str, rule: str, field: str | None = None) -> ToolError:
    return ToolError(message, code="gitops_error", rule=rule, field=field)


def server_dry_run(kube: Kube, ctx: CallContext) -> DryRun:
    """A server-side apply with dryRun=All of the rendered object: the cluster's admission and validation."""

    def run(body: dict[str, Any]) -> None:
        meta = body["metadata"]
        what = f"server-side dry run of {body.get('kind')} {meta['namespace']}/{meta['name']}"
        options: dict[str, Any] = {"dry_run": "All", "field_manager": FIELD_MANAGER, "force": True,
                                   "_content_type": APPLY_PATCH, "what": what, "audit_id": ctx.call_id}
        if body.get("kind") == KIND:
            from kubernetes.client import CustomObjectsApi

            custom = CustomObjectsApi(kube.connect())
            kube.call(custom.patch_namespaced_custom_object, GROUP, VERSION, meta["namespace"], PLURAL, meta["name"],
                      body, **options)
        else:
            kube.call(kube.apps.patch_namespaced_deployment, meta["name"], meta["namespace"], body, **options)

    return run


def _new_file(folder: Path, obj: ObjectRef, doc: dict[str, Any]) -> None:
    """The object as a new file in the folder, listed in its kustomization's resources when it has one."""
    path = folder / f"{obj.name}-{obj.kind.lower()}.yaml"
    if path.exists() or path.is_symlink():
        raise _fail(f"{path.name} exists in the GitOps folder but does not hold {obj.kind} {obj.name}",
                    "file-exists")
    YamlFile.new(path, doc).save()
    kustomization = kustomization_file(folder)
    if kustomization is not None:
        loaded = YamlFile.load(kustomization)
        add_resource(loaded.docs[0], path.name)
        loaded.save()


def _edit_document(folder: Path, obj: ObjectRef, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Change the object's own YAML document in the folder (found by apiVersion group, kind, name, namespace)."""
    found = find_manifest(folder, obj.group, obj.kind, obj.name, obj.namespace)
    if found is None:
        raise _fail(f"{obj.kind} {obj.namespace}/{obj.name} is made by this folder's kustomization, but its manifest "
                    "is not in the folder (a base elsewhere): change it there, or give it its own file here",
                    "manifest-outside-folder")
    loaded, index = found
    loaded.docs[index] = merge_into(loaded.docs[index], change(plain(loaded.docs[index])))
    loaded.save()


def _with_cause(doc: dict[str, Any], cause: str) -> dict[str, Any]:
    meta = doc.setdefault("metadata", {})
    annotations = meta.get("annotations") if isinstance(meta.get("annotations"), dict) else {}
    meta["annotations"] = {**annotations, CHANGE_CAUSE_ANNOTATION: cause}
    return doc


def _main_image(obj: dict[str, Any], name: str) -> str:
    template = spec_of(obj).get("template") or {}
    return str(spec_of(template)["containers"][main_container_index(template, name)]["image"])


# --------------------------------------------------------------------------- Deployments


def deploy(target: GitOpsTarget, kube: Kube | None, args: DeployArgs, ctx: CallContext) -> GitOpsResult:
    if args.env:
        raise _fail("env: in GitOps mode env values would be committed to Git in plain text; put them in a Secret "
                    "(sealed or external) and reference it from the manifest", "env-in-git", "env")
    obj = ObjectRef(APPS, "Deployment", args.name, args.namespace)
    spec = args.spec()
    cause = change_cause(ctx.principal, ctx.call_id)

    def edit(folder: Path, before: dict[str, Any] | None) -> Planned:
        enforce_bounds(ctx, BoundAttrs(replicas=args.replicas, current_replicas=int(spec_of(before).get("replicas")
                                                                                    or 0) if before else 0),
                       f"deployment {obj.namespace}/{obj.name} as Git has it")
        if before is None:
            _new_file(folder, obj, new_deployment(spec, obj.namespace, cause))
            want = new_deployment(spec, obj.namespace, cause)
            return Planned(f"deploy deployment {obj.namespace}/{obj.name} ({args.image})", _deployment_check(want))
        want = updated_deployment(before, spec)
        kustomization = kustomization_file(folder)
        if kustomization is not None and not (args.ports or args.resources or args.labels):
            loaded = YamlFile.load(kustomization)
            rendered = _main_image(before, args.name)
            if rendered != args.image:
                set_image_entry(loaded.docs[0], rendered, args.image)
            if args.replicas is not None and spec_of(before).get("replicas") != args.replicas:
                set_replicas_entry(loaded.docs[0], args.name, args.replicas)
            loaded.save()
        else:
            _edit_document(folder, obj, lambda doc: _with_cause(updated_deployment(doc, spec), cause))
        return Planned(f"deploy deployment {obj.namespace}/{obj.name} ({args.image})", _deployment_check(want))

    return make_change(target, "deploy", obj, ctx, dry_run=args.dry_run, edit=edit,
                       dry_run_apply=server_dry_run(kube, ctx) if kube is not None else None)


def _deployment_check(want: dict[str, Any]) -> Callable[[dict[str, Any] | None], str | None]:
    """Does the rendered Deployment have the images and replicas a direct write would have given it?"""

    def check(after: dict[str, Any] | None) -> str | None:
        if after is None:
            return "the Deployment is not among the rendered objects"
        got = (images_of(spec_of(after).get("template")), spec_of(after).get("replicas", 1))
        wanted = (images_of(spec_of(want).get("template")), spec_of(want).get("replicas", 1))
        return None if got == wanted else f"images and replicas render as {got}, the request makes {wanted}"

    return check


def scale(target: GitOpsTarget, kube: Kube | None, args: ScaleArgs, ctx: CallContext) -> GitOpsResult:
    if args.kind == KIND:
        return _scale_service(target, kube, args, ctx)
    obj = ObjectRef(APPS, "Deployment", args.name, args.namespace)
    replicas = args.replicas

    def edit(folder: Path, before: dict[str, Any] | None) -> Planned:
        if before is None:
            raise _not_in_git(obj, target)
        enforce_bounds(ctx, BoundAttrs(replicas=replicas, current_replicas=int(spec_of(before).get("replicas") or 0)),
                       f"deployment {obj.namespace}/{obj.name} as Git has it")
        kustomization = kustomization_file(folder)
        if kustomization is not None:
            loaded = YamlFile.load(kustomization)
            set_replicas_entry(loaded.docs[0], args.name, int(replicas or 0))
            loaded.save()
        else:
            _edit_document(folder, obj, lambda doc: {**doc, "spec": {**spec_of(doc), "replicas": replicas}})
        want = copy.deepcopy(before)
        want.setdefault("spec", {})["replicas"] = replicas
        return Planned(f"scale deployment {obj.namespace}/{obj.name} to {replicas}", _deployment_check(want))

    return make_change(target, "scale", obj, ctx, dry_run=args.dry_run, edit=edit,
                       dry_run_apply=server_dry_run(kube, ctx) if kube is not None else None)


def _not_in_git(obj: ObjectRef, target: GitOpsTarget) -> ToolError:
    return ToolError(f"{obj.kind.lower()} {obj.namespace}/{obj.name} is not in the GitOps folder "
                     f"{target.folder_for(obj.namespace)!r}: deploy it first", code="not_found", rule="not-in-git")


# --------------------------------------------------------------------------- InferenceServices


def _predictor_check(fields: dict[str, Any]) -> Callable[[dict[str, Any] | None], str | None]:
    def check(after: dict[str, Any] | None) -> str | None:
        if after is None:
            return "the InferenceService is not among the rendered objects"
        predictor = predictor_of(after)
        got = {key: (predictor.get("model") or {}).get(key[6:]) if key.startswith("model.") else predictor.get(key)
               for key in fields}
        return None if got == fields else f"the predictor renders {got}, the request makes {fields}"

    return check


def _asked(predictor: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    model = predictor.get("model") or {}
    return {key: model.get(key[6:]) if key.startswith("model.") else predictor.get(key) for key in keys}


def deploy_model(target: GitOpsTarget, kube: Kube | None, args: DeployModelArgs, ctx: CallContext) -> GitOpsResult:
    obj = ObjectRef(GROUP, KIND, args.name, args.namespace)
    cause = change_cause(ctx.principal, ctx.call_id)
    keys = ("model.storageUri", "minReplicas", "maxReplicas", "canaryTrafficPercent")

    def edit(folder: Path, before: dict[str, Any] | None) -> Planned:
        now = BoundAttrs(current_replicas=replica_ceiling(before) if before else 0)
        enforce_bounds(ctx, args.bound_attrs().but(now), f"inferenceservice {obj.namespace}/{obj.name} as Git has it")
        if before is None:
            notes = deploy_notes(None, args, {}, None)
            doc = new_inference_service(args, cause)
            _new_file(folder, obj, doc)
            return Planned(f"deploy_model inferenceservice {obj.namespace}/{obj.name}",
                           _predictor_check(_asked(predictor_of(doc), keys)), notes)
        predictor = desired_predictor(predictor_of(before), args, creating=False)
        notes = deploy_notes(before, args, predictor, mode_of(before))

        def change(doc: dict[str, Any]) -> dict[str, Any]:
            doc = _with_cause(doc, cause)
            if args.deployment_mode is not None:
                doc["metadata"]["annotations"][MODE_ANNOTATION] = args.deployment_mode
            own = desired_predictor(predictor_of(doc), args, creating=False)
            return {**doc, "spec": {**spec_of(doc), "predictor": own}}

        _edit_document(folder, obj, change)
        return Planned(f"deploy_model inferenceservice {obj.namespace}/{obj.name}",
                       _predictor_check(_asked(predictor, keys)), notes)

    return make_change(target, "deploy_model", obj, ctx, dry_run=args.dry_run, edit=edit,
                       dry_run_apply=server_dry_run(kube, ctx) if kube is not None else None)


def _scale_service(target: GitOpsTarget, kube: Kube | None, args: ScaleArgs, ctx: CallContext) -> GitOpsResult:
    obj = ObjectRef(GROUP, KIND, args.name, args.namespace)
    cause = change_cause(ctx.principal, ctx.call_id)
    asked = {"minReplicas": args.min_replicas, "maxReplicas": args.max_replicas, "scaleTarget": args.scale_target,
             "scaleMetric": args.scale_metric}
    asked = {k: v for k, v in asked.items() if v is not None}

    def edit(folder: Path, before: dict[str, Any] | None) -> Planned:
        if before is None:
            raise _not_in_git(obj, target)
        enforce_bounds(ctx, args.bound_attrs().but(BoundAttrs(current_replicas=replica_ceiling(before))),
                       f"inferenceservice {obj.namespace}/{obj.name} as Git has it")

        def change(doc: dict[str, Any]) -> dict[str, Any]:
            doc = _with_cause(doc, cause)
            return {**doc, "spec": {**spec_of(doc), "predictor": {**predictor_of(doc), **asked}}}

        _edit_document(folder, obj, change)
        return Planned(f"scale inferenceservice {obj.namespace}/{obj.name}", _predictor_check(asked))

    return make_change(target, "scale", obj, ctx, dry_run=args.dry_run, edit=edit,
                       dry_run_apply=server_dry_run(kube, ctx) if kube is not None else None)


# --------------------------------------------------------------------------- rollback


def rollback(target: GitOpsTarget, kube: Kube | None, args: RollbackArgs, ctx: CallContext) -> GitOpsResult:
    """Revert the last opsgate commit on the base branch that changed the object (``git revert``)."""
    if args.to_revision is not None:
        raise _fail("to_revision: in GitOps mode rollback reverts the last opsgate commit that changed the object; "
                    "a revision number is the cluster's, not Git's: omit it", "not-in-gitops-mode", "to_revision")
    group = GROUP if args.kind == KIND else APPS
    obj = ObjectRef(group, args.kind, args.name, args.namespace)
    _, sha, subject = find_change(target, obj)
    return make_change(target, "rollback", obj, ctx, dry_run=args.dry_run, revert=sha,
                       subject=f"rollback {obj.kind.lower()} {obj.namespace}/{obj.name}: revert {sha[:12]} "
                       f"({subject.removeprefix('opsgate: ')})",
                       dry_run_apply=server_dry_run(kube, ctx) if kube is not None else None)
