"""Manifests in a working tree, edited as YAML documents that keep their comments, order and quoting.

ruamel.yaml's round-trip mode, because the files are people's: PyYAML (the ``kubernetes`` client's) drops
comments and reorders keys, so every opsgate commit would rewrite lines nobody changed. Edits are made on
the loaded documents (never by building text), and only the fields a change sets are touched.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator, Mapping, MutableMapping, MutableSequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from opsgate.tools.errors import ToolError
from opsgate.tools.untrusted import quoted
from opsgate.vocab.limits import MAX_MANIFEST_BYTES

KUSTOMIZATION_NAMES: Final = ("kustomization.yaml", "kustomization.yml", "Kustomization")
_YAML_SUFFIXES: Final = (".yaml", ".yml")
# "key:" then a next line indented two more with "- ": the file indents its sequences (kubectl's style is not).
_INDENTED_SEQ: Final = re.compile(r"^( *)[^\s#-][^\n]*:\n\1  - ", re.MULTILINE)


def _yaml(text: str = "") -> YAML:
    yaml = YAML()  # round-trip
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold a long value onto a second line
    if _INDENTED_SEQ.search(text):
        yaml.indent(mapping=2, sequence=4, offset=2)
    else:
        yaml.indent(mapping=2, sequence=2, offset=0)
    return yaml


@dataclass
class YamlFile:
    """One file's documents, loaded for editing; :meth:`save` writes them back in the file's own style."""

    path: Path
    text: str
    docs: list[Any]

    @classmethod
    def load(cls, path: Path) -> YamlFile:
        """ToolError ``bad-manifest`` past :data:`MAX_MANIFEST_BYTES` (read no further) or when not UTF-8 YAML."""
        with path.open("rb") as stream:
            data = stream.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            raise ToolError(f"{path.name} is larger than {MAX_MANIFEST_BYTES >> 20} MiB; opsgate edits no manifest "
                            "file that large", code="gitops_error", rule="bad-manifest")
        try:
            text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # as read_text would read it
        except UnicodeDecodeError as exc:
            raise ToolError(f"{path.name} is not UTF-8 text (byte {exc.start})", code="gitops_error",
                            rule="bad-manifest") from None
        try:
            docs = [d for d in _yaml(text).load_all(text)]
        except Exception as exc:  # ruamel's parser and scanner errors share no base class worth naming
            raise ToolError(f"{path.name} is not valid YAML: {quoted(str(exc), 300)}", code="gitops_error",
                            rule="bad-manifest") from None
        return cls(path, text, docs)

    @classmethod
    def new(cls, path: Path, doc: Mapping[str, Any]) -> YamlFile:
        return cls(path, "", [plain_to_yaml(doc)])

    def dump(self) -> str:
        out = io.StringIO()
        yaml = _yaml(self.text)
        if self.text.lstrip().startswith("---") or len(self.docs) > 1:
            yaml.explicit_start = True
        yaml.dump_all(self.docs, out)
        return out.getvalue()

    def save(self) -> None:
        self.path.write_text(self.dump(), encoding="utf-8")


def plain_to_yaml(value: Any) -> Any:
    """A plain dict/list tree as ruamel's commented containers (so a new document dumps in block style)."""
    if isinstance(value, Mapping):
        out = CommentedMap()
        for key, item in value.items():
            out[key] = plain_to_yaml(item)
        return out
    if isinstance(value, list | tuple):
        return CommentedSeq(plain_to_yaml(v) for v in value)
    return value


#: Nodes one document may have once its aliases are expanded: a committed file is outside text, and YAML aliases
#: of aliases ("billion laughs") load as a few shared nodes that a copy expands exponentially.
MAX_DOCUMENT_NODES: Final = 200_000


def plain(value: Any) -> Any:
    """A loaded document as plain dicts, lists and scalars (ruamel's string subclasses as str). Pure.

    ToolError ``bad-manifest`` past :data:`MAX_DOCUMENT_NODES` nodes, counted with aliases expanded."""
    budget = [MAX_DOCUMENT_NODES]

    def copy(node: Any) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise ToolError(f"a manifest document has more than {MAX_DOCUMENT_NODES} nodes once its YAML aliases "
                            "are expanded", code="gitops_error", rule="bad-manifest")
        if isinstance(node, Mapping):
            return {str(k): copy(v) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return [copy(v) for v in node]
        if isinstance(node, str):
            return str(node)
        return node

    return copy(value)


def merge_into(node: Any, want: Any) -> Any:
    """``node`` (a loaded document's part) changed in place to equal ``want``, keeping what already equals it.

    Keys not in ``want`` go, keys in it are set; equal scalars keep their quoting and the comments next to
    them stay; a list of the same length is merged item by item, else replaced. Returns the node to store."""
    if isinstance(node, MutableMapping) and isinstance(want, Mapping):
        for key in [k for k in node if k not in want]:
            del node[key]
        for key, value in want.items():
            node[key] = merge_into(node[key], value) if key in node else plain_to_yaml(value)
        return node
    if (isinstance(node, MutableSequence) and isinstance(want, list | tuple) and len(node) == len(want)):
        for i, value in enumerate(want):
            node[i] = merge_into(node[i], value)
        return node
    if node == want and isinstance(node, bool) == isinstance(want, bool):
        return node
    return plain_to_yaml(want)


def yaml_files(folder: Path) -> Iterator[Path]:
    """Manifest files under ``folder``, in a stable order; hidden folders, kustomizations and symbolic links left
    out (a link committed to the repository could point an edit at a file outside it)."""
    found: list[Path] = []
    for top, dirs, files in os.walk(folder):  # does not follow links to folders
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(top) / f for f in files if Path(f).suffix in _YAML_SUFFIXES and f not in KUSTOMIZATION_NAMES
                  and not (Path(top) / f).is_symlink()]
    yield from sorted(found)


def kustomization_file(folder: Path) -> Path | None:
    for name in KUSTOMIZATION_NAMES:
        path = folder / name
        if path.is_symlink():
            raise ToolError(f"{path.name} in the GitOps folder is a symbolic link; opsgate edits only regular files",
                            code="gitops_error", rule="symlink")
        if path.is_file():
            return path
    return None


def group_of(api_version: Any) -> str:
    text = str(api_version or "")
    return text.split("/")[0] if "/" in text else ""


def is_object(doc: Any, group: str, kind: str, name: str, namespace: str) -> bool:
    """Does a document (loaded or rendered) describe this object? A document without a namespace is taken
    to be in the folder's namespace (kustomize or the applier sets it). Pure."""
    if not isinstance(doc, Mapping) or doc.get("kind") != kind or group_of(doc.get("apiVersion")) != group:
        return False
    meta = doc.get("metadata")
    if not isinstance(meta, Mapping) or meta.get("name") != name:
        return False
    return meta.get("namespace") in (None, namespace)


def find_manifest(folder: Path, group: str, kind: str, name: str, namespace: str) -> tuple[YamlFile, int] | None:
    """The file and document index that holds the object, among the plain manifests under ``folder``."""
    for path in yaml_files(folder):
        loaded = YamlFile.load(path)
        for i, doc in enumerate(loaded.docs):
            if is_object(doc, group, kind, name, namespace):
                return loaded, i
    return None


# --------------------------------------------------------------------------- kustomization entries


def split_image(ref: str) -> tuple[str, str | None, str | None]:
    """An image reference as kustomize's images entry sees it: name, tag, digest. Pure."""
    name, _, digest = ref.partition("@")
    tag = None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    return name, tag, digest or None


def set_image_entry(kustomization: MutableMapping[str, Any], rendered_image: str, new_image: str) -> None:
    """Point the kustomization's ``images:`` entry for the rendered image at ``new_image`` (added if none).

    The entry matched is the one whose output name is the rendered image's name (``newName`` or, without
    one, ``name``): that is the entry kustomize applied. Without one, the rendered name is what reaches
    this kustomization's image transformer, so a new entry is keyed by it."""
    rendered_name, _, _ = split_image(rendered_image)
    name, tag, digest = split_image(new_image)
    images = kustomization.get("images")
    if not isinstance(images, MutableSequence):
        images = kustomization["images"] = CommentedSeq()
    entry = next((e for e in images if isinstance(e, MutableMapping)
                  and str(e.get("newName") or e.get("name")) == rendered_name), None)
    if entry is None:
        entry = CommentedMap(name=rendered_name)
        images.append(entry)
    if name != str(entry.get("name")):
        entry["newName"] = name
    else:
        entry.pop("newName", None)
    for key, value in (("newTag", tag), ("digest", digest)):
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value


def set_replicas_entry(kustomization: MutableMapping[str, Any], name: str, count: int) -> None:
    """Set (or add) the kustomization's ``replicas:`` entry for ``name``."""
    entries = kustomization.get("replicas")
    if not isinstance(entries, MutableSequence):
        entries = kustomization["replicas"] = CommentedSeq()
    entry = next((e for e in entries if isinstance(e, MutableMapping) and e.get("name") == name), None)
    if entry is None:
        entries.append(CommentedMap(name=name, count=count))
    else:
        entry["count"] = count


def add_resource(kustomization: MutableMapping[str, Any], filename: str) -> None:
    resources = kustomization.get("resources")
    if not isinstance(resources, MutableSequence):
        resources = kustomization["resources"] = CommentedSeq()
    if filename not in resources:
        resources.append(filename)
