"""SOAP transport: the streaming MTOM/XOP codec and the glue around spyne."""
