"""Pure helpers on Kubernetes objects as the API sends them (JSON dicts): no I/O, no ``kubernetes`` import.

One noun a file, after kopf's ``_cogs/structs``: names, quantities, objects, templates, patches, diff,
status, pages. The same functions serve the real client, the sandbox and the tests.
"""
