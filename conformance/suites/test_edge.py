"""The edge-role scenarios: features/edge/*.feature judging a recorded session."""

from pathlib import Path

from pytest_bdd import scenarios

from conformance.steps.edge import *  # noqa: F403 - pytest-bdd finds steps in this module

FEATURES = Path(__file__).resolve().parents[2] / "features" / "edge"

scenarios(str(FEATURES))
