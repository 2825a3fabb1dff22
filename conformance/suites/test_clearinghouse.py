"""The clearinghouse-role scenarios: features/clearinghouse/*.feature against the target."""

from pathlib import Path

from pytest_bdd import scenarios

from conformance.steps.clearinghouse import *  # noqa: F403 - pytest-bdd finds steps in this module

FEATURES = Path(__file__).resolve().parents[2] / "features" / "clearinghouse"

scenarios(str(FEATURES))
