"""The console's pages, one module per audience; each exposes ``ROUTES``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from console.app import Route


def all_routes() -> list[Route]:
    from console.pages import account, admin, auditor, dashboard, integrator

    return [*dashboard.ROUTES, *admin.ROUTES, *auditor.ROUTES, *integrator.ROUTES, *account.ROUTES]
