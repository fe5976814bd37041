"""Shared test setup: offline by default, user cache in a temp dir unless a real cache is wanted."""

from __future__ import annotations

import os

# Offline, always: no test may reach the internet.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
