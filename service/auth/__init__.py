"""Tenants, tokens and scopes: who is calling, and what they may touch.

- ``scopes.py``: the scopes a token grants and the namespace patterns it may name;
- ``tenants.py``: a tenant (its namespaces, its chunk KV scope, its limits) and the
  principal a request acts as;
- ``tokens.py``: the tokens file (tenants and SHA-256 digests of tokens) and the
  table built from it or from the laptop modes;
- ``ratelimit.py``: the per-tenant token buckets;
- ``authenticator.py``: the current table, the Authorization header, reloads, metrics.
"""
