"""HTTP routes, one module per resource."""

from . import admin, batch, browse, health, items, search, similar

ROUTERS = (health.router, search.router, batch.router, browse.router, items.router, similar.router,
           admin.router)

__all__ = ["ROUTERS"]
