"""pytest-bdd step definitions of the conformance suite, one module per role under test."""
