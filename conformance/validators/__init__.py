"""Validators of what a participant under test sent: pure functions from a recorded transaction (its
facts and message) and the session's test data to a list of Findings, one module per subject."""
