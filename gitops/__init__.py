"""GitOps mode (issue 19 item 2): a write becomes a reviewed commit in the manifests Git holds.

``opsgate.gitops.render(path)`` gives what a folder of manifests makes (the drift tool compares it with
the cluster); :mod:`.tools` runs deploy, scale, rollback and deploy_model as commits; :mod:`.change` is the
worktree, commit, push and merge request; :mod:`.git` the one door to the ``git`` CLI.
"""

from .forge import DEFAULT_API, Forge, ForgeKind
from .models import GitOpsResult, GitOpsTarget
from .render import find_kubectl, render

__all__ = ["DEFAULT_API", "Forge", "ForgeKind", "GitOpsResult", "GitOpsTarget", "find_kubectl", "render"]
