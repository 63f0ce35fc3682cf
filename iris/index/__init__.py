"""The image search index: items and vectors in SQLite, searched through one in-memory structure per server.

`store` holds the SQLite side (items, vectors, thumbnails, tombstones, retention), `search` the in-memory
fp16 vectors a query is scored against, `folder` what `iris find` does with a folder.
"""

from iris.index.folder import EmbedFn, IndexReport, index_folder
from iris.index.store import Hit, ImageIndex, ScanState

__all__ = ["EmbedFn", "Hit", "ImageIndex", "IndexReport", "ScanState", "index_folder"]
