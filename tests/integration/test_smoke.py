"""The node and client end to end: the quick start works."""

from __future__ import annotations

import numpy as np

import objstore


async def test_put_get_roundtrip(node) -> None:
    async with objstore.connect(node.socket) as client:
        ref = await client.put(b"hello")
        got = await client.get(ref)
        assert isinstance(got, memoryview) and got.readonly and bytes(got) == b"hello"
        arr = np.arange(1_000_000, dtype=np.int64)
        ref2 = await client.put(arr)
        back = await client.get(ref2)
        assert not back.flags.writeable
        np.testing.assert_array_equal(back, arr)
        assert await ref2 is not None
