"""Conformance suite and reference simulators: an edge that sends and a PHR that pulls, with fault
injection, and the Gherkin scenarios (features/) that judge an edge, a PHR or a clearinghouse."""
