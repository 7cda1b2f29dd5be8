"""thp-checker: find, prove and protect nodes whose kernel drops dirty page cache.

The bug: with ``CONFIG_READ_ONLY_THP_FOR_FS=y`` a read-only huge page in a regular file's page
cache makes the next write-open purge the cache, cancelling dirty pages without writeback.
"""

__version__ = "0.1.0"
