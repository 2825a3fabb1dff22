"""XDS.b Document Repository actor: ITI-41 Provide and Register Document Set-b, ITI-43 Retrieve Document Set."""
