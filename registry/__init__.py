"""XDS.b Document Registry actor (ITI-42, ITI-18) and its patient identity feed (ITI-8)."""
