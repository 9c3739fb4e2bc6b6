"""The OpenAI-compatible caching proxy: the pieces its route group puts together.

:mod:`.upstream` calls the configured upstream; :mod:`.sse` reads and writes its
server-sent events; :mod:`.requests` says whether a request may be cached and with
which key; :mod:`.cache_control` reads the caller's ``Cache-Control``;
:mod:`.coalesce` makes identical concurrent misses share one upstream call;
:mod:`.metrics` counts hits, misses, bypasses and what they saved; :mod:`.component`
wires them to the daemon. The answers' record and replay are the protocol's
(:mod:`semcached.protocol.chat_replay`), shared with the in-process SDK wrapper.
"""
