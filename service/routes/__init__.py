"""HTTP routes, one module per resource."""

from . import admin, batch, health, items, search

ROUTERS = (health.router, search.router, batch.router, items.router, admin.router)

__all__ = ["ROUTERS"]
