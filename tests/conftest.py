"""Shared pytest fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Path of a tiny Qwen2 model + tokenizer (iprime.models.make_tiny_model defaults), built
    once per test session. Treat as read-only: load it, do not write into it."""
    from iprime.models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"), seed=0)
