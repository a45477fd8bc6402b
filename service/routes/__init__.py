"""HTTP routes, one module per resource."""

from . import admin, health, items, search

ROUTERS = (health.router, search.router, items.router, admin.router)

__all__ = ["ROUTERS"]
