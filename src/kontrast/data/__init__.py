"""Data: image(-caption) collections (folders, CSV, webdataset shards) and training streams."""

from .sources import (
                      CsvSource,
                      FolderSource,
                      Record,
                      Source,
                      TarSource,
                      expand_braces,
                      expand_paths,
                      open_source,
                      split_units,
)

__all__ = ["CsvSource", "FolderSource", "Record", "Source", "TarSource", "expand_braces", "expand_paths",
           "open_source", "split_units"]
