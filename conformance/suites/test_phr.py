"""The PHR-role scenarios: features/phr/*.feature judging a recorded session."""

from pathlib import Path

from pytest_bdd import scenarios

from conformance.steps.phr import *  # noqa: F403 - pytest-bdd finds steps in this module

FEATURES = Path(__file__).resolve().parents[2] / "features" / "phr"

scenarios(str(FEATURES))
