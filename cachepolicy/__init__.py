"""semcached.cachepolicy."""
