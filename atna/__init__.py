"""IHE ATNA Audit Record Repository: ITI-20 receivers, durable storage with a hash chain, ITI-81 search."""
