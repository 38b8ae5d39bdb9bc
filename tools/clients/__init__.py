"""Clients of the services opsgate talks to besides Kubernetes (whose one door is :mod:`opsgate.tools.kube`)."""
