"""coatcheck: server-side login sessions for FastAPI and any ASGI app.

The browser holds a claim ticket (an unguessable ID in a hardened cookie); the
server keeps the coat (the session data) in a store.
"""

from __future__ import annotations

from ._devices import Device
from ._flash import Flash
from .config import (
    CookieConfig,
    CSRFConfig,
    Lifetime,
    SessionConfig,
    StarletteImport,
    StarsessionsImport,
)
from .events import EventHook, SessionEvent
from .exceptions import (
    CoatcheckError,
    ConfigurationError,
    MissingDependencyError,
    NotSupportedError,
    ResponseStartedError,
    SerializationError,
    SessionConflictError,
    SessionEndedError,
    SessionLimitError,
    SessionNotLoadedError,
    SessionTooLargeError,
    StoreError,
    StoreFullError,
    StoreUnavailableError,
)
from .middleware import SessionMiddleware
from .serializers import JSONSerializer, Serializer
from .session import Session
from .stores import (
    MemoryStore,
    MovingStore,
    SessionRecord,
    SQLiteStore,
    Store,
    store_from_url,
)

__version__ = "0.1.0"

__all__ = [
    "CSRFConfig",
    "CoatcheckError",
    "ConfigurationError",
    "CookieConfig",
    "Device",
    "EventHook",
    "Flash",
    "JSONSerializer",
    "Lifetime",
    "MemoryStore",
    "MissingDependencyError",
    "MovingStore",
    "NotSupportedError",
    "ResponseStartedError",
    "SQLiteStore",
    "SerializationError",
    "Serializer",
    "Session",
    "SessionConfig",
    "SessionConflictError",
    "SessionEndedError",
    "SessionEvent",
    "SessionLimitError",
    "SessionMiddleware",
    "SessionNotLoadedError",
    "SessionRecord",
    "SessionTooLargeError",
    "StarletteImport",
    "StarsessionsImport",
    "Store",
    "StoreError",
    "StoreFullError",
    "StoreUnavailableError",
    "store_from_url",
]
