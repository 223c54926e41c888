"""Baton's orchestrator core: settings, the one request path, approvals, the CLI.

The core imports no chat SDK; adapters are discovered through the ``baton.adapters`` entry point.
"""
