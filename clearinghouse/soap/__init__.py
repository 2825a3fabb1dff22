"""SOAP 1.2 transport: the endpoint (hardened intake, WS-Addressing, dispatch by action), the client,
and the streaming MTOM/XOP codec."""
