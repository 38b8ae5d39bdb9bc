"""The capabilities behind opsgate's tools: Kubernetes workloads, KServe, local ONNX inference; no MCP, no policy."""
