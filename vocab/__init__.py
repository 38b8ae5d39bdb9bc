"""The words every opsgate package shares: name rules, limits, element counting and workload kinds.

A leaf: it imports no other opsgate package, so ``tools``, ``policies``, ``server`` and ``sandbox``
can all agree on one rule by importing it from here instead of writing it again.
"""
