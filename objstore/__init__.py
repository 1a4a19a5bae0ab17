"""objstore: an asyncio-native distributed object store for Python.

```python
import objstore

async with objstore.connect() as client:
    ref = await client.put(numpy_array)
    view = await client.get(ref)        # zero-copy, read-only
```
"""

from objstore import errors
from objstore.client import Client, ObjectRef, connect
from objstore.errors import (
    AuthenticationError,
    ConfigError,
    GetTimeoutError,
    NodeUnavailableError,
    ObjectExistsError,
    ObjectFetchTimedOutError,
    ObjectFreedError,
    ObjectLostError,
    ObjectNotFoundError,
    ObjectReconstructionFailedError,
    ObjectStoreError,
    ObjectStoreFullError,
    OutOfDiskError,
    OwnerDiedError,
    ProtocolError,
    SerializationError,
)

__version__ = "0.1.0"

__all__ = [
    "Client",
    "ObjectRef",
    "connect",
    "errors",
    "ObjectStoreError",
    "ObjectStoreFullError",
    "OutOfDiskError",
    "ObjectNotFoundError",
    "ObjectExistsError",
    "ObjectLostError",
    "GetTimeoutError",
    "NodeUnavailableError",
    "ProtocolError",
    "ConfigError",
    "SerializationError",
    "AuthenticationError",
    "ObjectFreedError",
    "OwnerDiedError",
    "ObjectReconstructionFailedError",
    "ObjectFetchTimedOutError",
]
