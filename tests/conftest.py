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
def offline_app_launching(tmp_path_factory):
    """One launched app on the offline preset, shared by every browser test that can live with the others'
    judgments in its database: ``(url, db_path)``, yielded as soon as the page answers, while the models may
    still load. Launching the offline preset costs a minute, so the page tests share it instead of each
    starting their own. ``tests/test_a_question_while_loading.py`` (first in file order) asks while it loads."""
    from tests.live_app import launched_app

    folder = tmp_path_factory.mktemp("live-shared")
    with launched_app(folder / "routelens.sqlite", wait_for_models_to_load=False) as url:
        yield url, folder / "routelens.sqlite"


@pytest.fixture(scope="session")
def offline_app(offline_app_launching):
    """The shared offline app once every backend and the router have loaded: ``(url, db_path)``."""
    from tests.live_app import wait_for_models

    wait_for_models(offline_app_launching[1])
    return offline_app_launching
