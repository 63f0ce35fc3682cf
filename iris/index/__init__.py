"""The image search index: items and vectors in SQLite, searched through one in-memory structure per server.

`store` is the SQLite side (items, vectors, thumbnails, tombstones, retention) on the tables of `schema`;
`search` keeps one in-memory structure per server current, `vectors` holds its fp16 arrays and scores
them; `folder` is what `iris find` does with a folder.
"""

from iris.index.base import Hit, ScanState
from iris.index.folder import EmbedFn, IndexReport, index_folder
from iris.index.store import ImageIndex

__all__ = ["EmbedFn", "Hit", "ImageIndex", "IndexReport", "ScanState", "index_folder"]
