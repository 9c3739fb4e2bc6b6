"""semcached.ext."""
