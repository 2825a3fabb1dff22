"""The web console: server-rendered pages for site administrators, auditors and integrators, on its
own HTTPS port (see docs/console.md)."""
