"""semcached: a cache-and-index daemon for LLM serving.

The daemon lives in :mod:`semcached.service`, the clients in :mod:`semcached.clients`.
"""

from semcached._version import __version__
from semcached.errors import SemcachedError

__all__ = ["SemcachedError", "__version__"]
