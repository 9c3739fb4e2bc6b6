"""semcached.index."""
