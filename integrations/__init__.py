"""Caches for the places gateways live, built on :mod:`semcached.clients`.

Each submodule wraps one third-party package and imports it; install them with the
``integrations`` extra (``pip install 'semcached[integrations]'``).
"""

__all__: list[str] = []
