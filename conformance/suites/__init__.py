"""Test modules that bind the feature files to their steps (run by ``clearinghouse conformance run``)."""
