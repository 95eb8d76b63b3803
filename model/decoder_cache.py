"""Per-image decoder caches of a predictor, bounded in bytes.

A serving replica or an interactive session decodes the same cached image many times. Part of
each call depends on the image alone (`decoder.ImageDecoderCache`: for Focal-T at 512 x 683
about 100 MB, mostly key and value projections, ~half of a phrase). `DecoderCaches` keeps that work
for the features objects decoded most recently, as long as they live and within a byte
budget, so the second phrase on an image skips it while memory stays bounded.
"""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

from .decoder import ImageDecoderCache
from .types import ImageFeatures


class DecoderCaches:
    """`ImageDecoderCache` per live `ImageFeatures` object, least recently used dropped first.

    Keyed by the features object itself (not its tensors' values): the object a replica's
    feature cache holds, or the one `encode` returned. An entry goes when its features object
    is garbage collected or when the budget needs room; `max_bytes <= 0` keeps nothing.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, tuple[weakref.ref, ImageDecoderCache]] = OrderedDict()
        # RLock: a weakref callback can run inside a locked section of the same thread (GC).
        self._lock = threading.RLock()

    def for_image(self, features: ImageFeatures) -> ImageDecoderCache | None:
        """The cache of `features` (a new empty one on first use), or None when caching is off."""
        if self.max_bytes <= 0:
            return None
        key = id(features)
        with self._lock:
            cache = self._live(features)
            if cache is not None:
                self._entries.move_to_end(key)
                return cache
            cache = ImageDecoderCache()
            self._entries[key] = (weakref.ref(features, self._forget_callback(key)), cache)
            return cache

    def adopt(self, features: ImageFeatures, cache: ImageDecoderCache) -> None:
        """Keep `cache` as the cache of `features` (e.g. a new features object of the same image)."""
        if self.max_bytes <= 0:
            return
        with self._lock:
            self._entries[id(features)] = (weakref.ref(features, self._forget_callback(id(features))), cache)
        self.trim()

    def trim(self) -> None:
        """Drop least recently used caches until the total fits the budget (the most recent one
        too if it alone does not fit)."""
        with self._lock:
            total = self.nbytes
            while self._entries and total > self.max_bytes:
                _, (_, cache) = self._entries.popitem(last=False)
                total -= cache.nbytes

    def nbytes_of(self, features: ImageFeatures) -> int:
        """Bytes kept for `features` (0 when nothing is)."""
        with self._lock:
            cache = self._live(features)
            return 0 if cache is None else cache.nbytes

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(cache.nbytes for _, cache in self._entries.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _live(self, features: ImageFeatures) -> ImageDecoderCache | None:
        """The entry of `features` itself (an id can outlive its object and be reused); under the lock."""
        entry = self._entries.get(id(features))
        return entry[1] if entry is not None and entry[0]() is features else None

    def _forget_callback(self, key: int):  # noqa: ANN202 - a weakref callback
        entries, lock = self._entries, self._lock

        def forget(ref: weakref.ref) -> None:
            with lock:
                entry = entries.get(key)
                if entry is not None and entry[0] is ref:
                    del entries[key]
        return forget
