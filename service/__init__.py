"""semcached.service."""
