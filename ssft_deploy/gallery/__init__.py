"""The gallery: people's features (shared and specific), searchable, behind one interface.

``open_gallery(uri, dims)`` picks the store:

* a file path: the local store (numpy + faiss in this process, the file shared by the processes
  of one machine under a lock; :mod:`ssft_deploy.gallery.local`);
* ``milvus:PATH.db``: Milvus Lite (embedded, one process; ``pip install 'pymilvus[milvus-lite]'``);
* ``http(s)://host:19530``: a Milvus standalone or distributed server (``token=`` for auth).

``Gallery()`` is the in-process store (no file until ``save``). Every store records the bundle
binding (feature dims and model hash) and refuses another bundle's gallery with GalleryError.
"""

from __future__ import annotations

import os
from typing import Any

from ssft_deploy.errors import GalleryError
from ssft_deploy.gallery.base import MODES, GalleryStore, SearchResult
from ssft_deploy.gallery.binding import GalleryBinding, as_binding, bundle_binding
from ssft_deploy.gallery.fileio import MAGIC
from ssft_deploy.gallery.ids import UNKNOWN
from ssft_deploy.gallery.memory import Gallery
from ssft_deploy.gallery.records import FORMAT

MILVUS_LITE = "milvus:"


def open_gallery(uri: str | os.PathLike, dims: Any, *, model_hash: str | None = None,
                 **options: Any) -> GalleryStore:
    """Open (or create) the gallery at ``uri`` for features of ``dims`` (a Bundle, a
    GalleryBinding, ``{"shared":, "specific":}`` or ``(shared, specific)``).

    Options: local store ``index`` ("auto" | "flat" | "ivf" | "hnsw"), ``nprobe`` /
    ``ef_search`` (Eq. 6 neighbour lists), ``shortlist_nprobe`` / ``shortlist_ef_search``
    (two-stage search's stage one; default: 60% of the IVF lists, 8 x M), ``lock_timeout_s``;
    Milvus ``collection``, ``token``, ``index`` ("flat" | "ivf" | "hnsw" | "auto"), ``nprobe``,
    ``shortlist_nprobe``, ``timeout_s`` (connection retries with backoff, bounded)."""
    binding = as_binding(dims, model_hash)
    text = os.fspath(uri)
    if text.startswith(("http://", "https://")):
        from ssft_deploy.gallery.milvus import MilvusGallery

        return MilvusGallery(text, binding, **options)
    if text.startswith(MILVUS_LITE):
        path = text[len(MILVUS_LITE):]
        if not path.endswith(".db"):
            raise GalleryError(f"a Milvus Lite gallery is a local .db file: {MILVUS_LITE}PATH.db, "
                               f"got {text!r}")
        from ssft_deploy.gallery.milvus import MilvusGallery

        return MilvusGallery(text, binding, client_uri=os.path.abspath(path), **options)
    if "://" in text:
        raise GalleryError(f"unknown gallery URI {text!r}: use a file path, {MILVUS_LITE}PATH.db "
                           "or http(s)://host:19530")
    from ssft_deploy.gallery.local import LocalGallery

    return LocalGallery(text, binding, **options)


__all__ = ["FORMAT", "MAGIC", "MODES", "UNKNOWN", "Gallery", "GalleryBinding", "GalleryStore",
           "SearchResult", "as_binding", "bundle_binding", "open_gallery"]
