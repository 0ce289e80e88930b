"""Fault drills share the integration fixtures (real stacks on free ports)."""

from tests.integration.conftest import _shared_tools, stack_factory  # noqa: F401
