"""Computed once per model, ever: weight fingerprints in memory, text encodings (and RECE's Gram) on disk.

Mass erasure re-encodes the same preserve and retain lists on every run, and text encoding is most of what a closed-form
edit costs (benchmarks/README.md, "encoding_cache.py"). :class:`TensorCache` keeps such results on disk under
``$ERASEKIT_CACHE/computed``, content-addressed: a key is the sha256 of everything the value depends on, so an entry
can never be served for other weights or other inputs, only be missing.

* Writes are atomic (:func:`erasekit.io.atomic_file`): concurrent runs may write the same entry, readers see a whole
  file or none; an entry that vanishes (evicted by another run) or cannot be read is a miss.
* Size limit: beyond ``$ERASEKIT_TEXT_CACHE_MB`` (default :data:`DEFAULT_LIMIT_MB`) the least recently used entries are
  deleted (a hit refreshes the entry's modification time).
* Bypass: ``ERASEKIT_TEXT_CACHE=0``, ``erasekit --no-cache``, or ``ModelAdapter.tensor_cache = None``; the adapter
  also bypasses it while a forward hook sits on a text encoder (the hook must see every prompt). ``erasekit cache
  clear`` empties it. The test suite switches it off (tests/conftest.py).
* The value is exactly what the computation gives on the same device kind and torch version (both are in the key): on
  the CPU the text encoder is batch-invariant (checked at CLIP ViT-L size), so a row encoded in another batch is the
  same bits. GPU kernels may depend on the batch size; there a cached row can differ from a fresh one by float noise.

Fingerprinting weights costs time itself (sha256 of 0.5-3 GB of text-encoder weights). :func:`memo_fingerprint`
remembers a digest per set of tensors, with a stamp of each tensor: its storage (held weakly, so a freed and reused
address is not mistaken for the old tensor), offset, shape, stride, dtype and autograd's version counter, which every
in-place write through the tensor or a ``.detach()`` view bumps (``copy_``, ``load_state_dict``, optimiser steps) and
``module.to(...)`` replaces the storage. Writes that bypass the version counter (through ``param.data`` or a NumPy view)
are not seen: after such a write call :func:`forget_fingerprints` on the module, or bypass the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ConfigError
from ..io import atomic_file
from .loading import cache_dir

SWITCH_ENV = "ERASEKIT_TEXT_CACHE"
"""``0`` (or ``off``, ``false``, ``no``) bypasses the on-disk cache: nothing is read or written."""
LIMIT_ENV = "ERASEKIT_TEXT_CACHE_MB"
"""Size limit of the on-disk cache in MiB; least recently used entries are deleted beyond it."""
DEFAULT_LIMIT_MB = 2048
"""About 9,000 SD1.x or 3,300 SDXL full encodings (236 / 630 KiB each)."""
_MEMO_ATTR = "_erasekit_fingerprints"


def tensors_fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of ``tensors`` (in sorted name order)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself: no copy of the weights
    return digest.hexdigest()


def _stamp(t: torch.Tensor) -> tuple[Any, ...]:
    return (t.untyped_storage(), t.storage_offset(), t.shape, t.stride(), t.dtype, t.device, t._version)


def _same(stamp: tuple[Any, ...], t: torch.Tensor) -> bool:
    storage_ref, *rest = stamp
    now = _stamp(t)
    return storage_ref() is now[0] and tuple(rest) == now[1:]


def memo_fingerprint(owner: nn.Module, tensors: Mapping[str, torch.Tensor]) -> str:
    """:func:`tensors_fingerprint` of ``tensors`` (parameters or buffers of ``owner``), remembered on ``owner`` until
    one of them is written in place or replaced (see the module docstring for what is and is not seen)."""
    memo: dict[tuple[str, ...], tuple[list[tuple[Any, ...]], str]] = owner.__dict__.setdefault(_MEMO_ATTR, {})
    names = tuple(sorted(tensors))
    if names in memo:
        stamps, digest = memo[names]
        if all(_same(s, tensors[n]) for s, n in zip(stamps, names, strict=True)):
            return digest
    digest = tensors_fingerprint(tensors)
    stamps = []
    for name in names:
        storage, *rest = _stamp(tensors[name])
        stamps.append((weakref.ref(storage), *rest))
    memo[names] = (stamps, digest)
    return digest


def module_fingerprint(module: nn.Module) -> str:
    """sha256 of ``module``'s state dict (:func:`memo_fingerprint`: hashed again only after its weights change)."""
    return memo_fingerprint(module, module.state_dict(keep_vars=True))


def forget_fingerprints(module: nn.Module) -> None:
    """Drop the fingerprints remembered on ``module`` (after writing its weights behind autograd's back)."""
    module.__dict__.pop(_MEMO_ATTR, None)


def digest(*parts: str | bytes) -> str:
    """sha256 of ``parts``, each length-prefixed (no two part lists give the same bytes)."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(f"{len(data)}:".encode())
        h.update(data)
    return h.hexdigest()


def cache_enabled() -> bool:
    """False where ``$ERASEKIT_TEXT_CACHE`` switches the on-disk cache off."""
    return os.environ.get(SWITCH_ENV, "1").strip().lower() not in ("0", "off", "false", "no")


def limit_bytes() -> int:
    """The size limit from ``$ERASEKIT_TEXT_CACHE_MB`` (default :data:`DEFAULT_LIMIT_MB`)."""
    raw = os.environ.get(LIMIT_ENV, str(DEFAULT_LIMIT_MB))
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if mb < 0:
        raise ConfigError(f"{LIMIT_ENV}: '{raw}' is not a size in MiB (a number >= 0)")
    return int(mb * 2**20)


@dataclass(frozen=True)
class CacheStats:
    """What ``erasekit cache info`` shows."""

    folder: Path
    entries: dict[str, int]
    bytes: int
    limit: int
    enabled: bool


class TensorCache:
    """Named tensors on disk by content key, in ``namespace`` folders of one size-limited store.

    ``get(namespace, key)`` returns the tensors or None; ``put`` stores them atomically; :meth:`evict` keeps the store
    under its limit (called after a batch of ``put`` s rather than each one: it lists the store).
    """

    SUFFIX = ".safetensors"

    def __init__(self, folder: Path | None = None, limit: int | None = None) -> None:
        self.folder = Path(folder) if folder is not None else cache_dir() / "computed"
        self.limit = limit_bytes() if limit is None else limit

    @classmethod
    def from_env(cls) -> TensorCache | None:
        """The user's cache, or None where ``$ERASEKIT_TEXT_CACHE`` switches it off."""
        return cls() if cache_enabled() else None

    def path(self, namespace: str, key: str) -> Path:
        return self.folder / namespace / key[:2] / f"{key}{self.SUFFIX}"

    def get(self, namespace: str, key: str) -> dict[str, torch.Tensor] | None:
        path = self.path(namespace, key)
        try:
            tensors = load_file(str(path))
        except (OSError, SafetensorError):  # missing, evicted meanwhile, or unreadable: a miss
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # most recently used
        return tensors

    def put(self, namespace: str, key: str, tensors: Mapping[str, torch.Tensor]) -> None:
        # a read-only or full cache folder costs speed, never a result
        with contextlib.suppress(OSError), atomic_file(self.path(namespace, key)) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))

    def _files(self) -> list[os.DirEntry[str]]:
        files: list[os.DirEntry[str]] = []
        stack = [self.folder]
        while stack:
            try:
                with os.scandir(stack.pop()) as entries:
                    for entry in entries:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        elif entry.name.endswith(self.SUFFIX) and not entry.name.startswith("."):
                            files.append(entry)
            except OSError:  # gone meanwhile, or unreadable: nothing of ours to count
                continue
        return files

    def evict(self) -> None:
        """Delete least recently used entries until the store is within its limit."""
        sized = []
        for entry in self._files():
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            sized.append((st.st_mtime, st.st_size, entry.path))
        total = sum(size for _, size, _ in sized)
        for _, size, path in sorted(sized):
            if total <= self.limit:
                break
            with contextlib.suppress(OSError):  # another run evicted it, or it cannot be: the limit is best effort
                os.remove(path)
            total -= size

    def stats(self) -> CacheStats:
        entries: dict[str, int] = {}
        total = 0
        for entry in self._files():
            namespace = Path(entry.path).relative_to(self.folder).parts[0]
            entries[namespace] = entries.get(namespace, 0) + 1
            try:
                total += entry.stat().st_size
            except FileNotFoundError:
                continue
        return CacheStats(self.folder, dict(sorted(entries.items())), total, self.limit, cache_enabled())

    def clear(self) -> int:
        """Delete every entry; return how many bytes that freed."""
        freed = self.stats().bytes
        shutil.rmtree(self.folder, ignore_errors=True)
        return freed
