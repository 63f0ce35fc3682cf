"""The image search index: items and vectors in SQLite or PostgreSQL, searched in memory per server.

`open_index` picks the backend. `store` is the SQLite side (items, vectors, thumbnails, tombstones,
retention) on the tables of `schema`; `pg` the same on PostgreSQL (`pg_schema`); `base` their shared search;
`search` keeps one in-memory structure per server current, `vectors` holds its fp16 arrays and scores
them; `folder` is what `iris find` does with a folder.
"""

from iris.index.base import Hit, Index, ScanState, open_index
from iris.index.folder import EmbedFn, IndexReport, index_folder
from iris.index.store import ImageIndex

__all__ = ["EmbedFn", "Hit", "ImageIndex", "Index", "IndexReport", "ScanState", "index_folder", "open_index"]
