"""Shared fixtures: everything real, just small. Environment set before any model code is imported."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest


@pytest.fixture(scope="session")
def offline_app(tmp_path_factory):
    """One launched app on the offline preset, shared by every browser test that can live with the others'
    judgments in its database: ``(url, db_path)``. Launching the offline preset costs half a minute, so
    the page tests share it instead of each starting their own."""
    from tests.live_app import launched_app

    folder = tmp_path_factory.mktemp("live-shared")
    with launched_app(folder / "routelens.sqlite") as url:
        yield url, folder / "routelens.sqlite"
