"""A watch cache: the last version of each object of one kind, kept by the controller's
list-and-watch, so that a reconcile reads its InferenceService from memory instead of
asking the apiserver every time.

The watcher fills it: a list replaces a scope's contents (the whole cluster, or one
namespace) and marks the scope *synced*; each watch event then updates one object; a watch
that breaks marks its scope unsynced until the next list. Reads are served only from a
synced scope; anything else (an unsynced scope, an object the cache has not seen) is for
the caller to read from the apiserver, so the cache never answers "not found" on its own.

The controller's own writes put their answers in too (:meth:`offer`), so its next read sees
what it wrote before the watch event arrives. Versions are compared where both are decimal
numbers (etcd's revisions, which the apiserver passes through): an older version never
replaces a newer one, whichever path brought it. A stale read cannot cause a wrong write:
every write of a rollout is conditional on the resourceVersion it read, and the apiserver
refuses it (Conflict) if the object changed meanwhile.

Readers get a deep copy: nobody can change the cached object under another reader.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["ObjectCache"]

Key = tuple[str, str]  # (namespace, name)
_ALL: str | None = None


def _key(obj: Mapping[str, Any]) -> Key | None:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    namespace, name = meta.get("namespace"), meta.get("name")
    if not isinstance(namespace, str) or not isinstance(name, str) or not name:
        return None
    return namespace, name


def _version(obj: Mapping[str, Any]) -> int | None:
    meta = obj.get("metadata")
    version = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
    if isinstance(version, str) and version.isdecimal():
        return int(version)
    return None


def _older(candidate: int | None, than: int | None) -> bool:
    """True when both versions are known and ``candidate`` is strictly older."""
    return candidate is not None and than is not None and candidate < than


class ObjectCache:
    """Thread-safe: the watcher writes, any worker reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[Key, dict[str, Any]] = {}
        self._synced: set[str | None] = set()  # None: the whole cluster

    # --- the watcher's side -----------------------------------------------------------------

    def replace(
        self, scope: str | None, items: Iterable[Mapping[str, Any]], list_version: str
    ) -> None:
        """A fresh list of ``scope`` (a namespace, or None for all). Objects of the scope
        the list lacks are dropped, unless written by us after the list was taken."""
        listed: dict[Key, dict[str, Any]] = {}
        for item in items:
            key = _key(item)
            if key is not None:
                listed[key] = dict(item)
        at = int(list_version) if list_version.isdecimal() else None
        with self._lock:
            for key, obj in list(self._objects.items()):
                if scope is not _ALL and key[0] != scope:
                    continue
                new = listed.get(key)
                if new is None:
                    if not _older(at, _version(obj)):
                        del self._objects[key]
                elif _older(_version(new), _version(obj)):
                    listed.pop(key)  # ours is newer (a write answered after the list)
            self._objects.update(listed)
            self._synced.add(scope)

    def apply(self, event_type: str, obj: Mapping[str, Any]) -> None:
        """One watch event: ``ADDED``, ``MODIFIED`` or ``DELETED`` (others are ignored)."""
        key = _key(obj)
        if key is None:
            return
        with self._lock:
            held = self._objects.get(key)
            if event_type == "DELETED":
                if held is None or not _older(_version(obj), _version(held)):
                    self._objects.pop(key, None)
            elif event_type in ("ADDED", "MODIFIED") and (
                held is None or not _older(_version(obj), _version(held))
            ):
                self._objects[key] = dict(obj)

    def unsync(self, scope: str | None) -> None:
        """The scope's watch broke: its objects are no longer served until listed again."""
        with self._lock:
            self._synced.discard(scope)

    # --- the controller's writes ------------------------------------------------------------

    def offer(self, obj: Mapping[str, Any]) -> None:
        """An object as a write returned it: kept unless the cache holds a newer one. (A
        copy: the writer keeps its own.)"""
        self.apply("MODIFIED", copy.deepcopy(dict(obj)))

    def refused(self, namespace: str, name: str) -> None:
        """A write of the object was refused with a Conflict: it changed since it was read,
        maybe since the version held here. Not served again until the watch or a write
        brings a version (a read meanwhile goes to the apiserver)."""
        with self._lock:
            self._objects.pop((namespace, name), None)

    # --- readers ----------------------------------------------------------------------------

    def synced(self, namespace: str) -> bool:
        with self._lock:
            return _ALL in self._synced or namespace in self._synced

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A copy of the cached object, or None when the cache cannot answer (scope not
        synced, or the object not seen): then read it from the apiserver."""
        with self._lock:
            synced = _ALL in self._synced or namespace in self._synced
            held = self._objects.get((namespace, name)) if synced else None
        return None if held is None else copy.deepcopy(held)

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)
