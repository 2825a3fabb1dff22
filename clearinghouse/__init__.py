"""Shared core of the ISN Image Clearinghouse: configuration, database, TLS, SOAP/MTOM transport, CLI."""

__version__ = "0.1.0"
