from typing import Any

from channels.consumer import AsyncConsumer
from djangochannelsrestframework.permissions import IsAuthenticated


class IsAuthenticatedForWrite(IsAuthenticated):
    """Anyone may read (list, retrieve); every other action needs a signed-in user."""

    async def has_permission(
        self, scope: dict[str, Any], consumer: AsyncConsumer, action: str, **kwargs
    ) -> bool:
        if action in ("list", "retrieve"):
            return True
        return await super().has_permission(scope, consumer, action, **kwargs)
