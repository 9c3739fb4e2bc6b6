"""Lookup ids: what is signed comes back, anything else resolves to nothing."""

from __future__ import annotations

import pytest

from semcached.service.semantic.lookup_ids import LookupIdSigner, SignedLookup

HIT = SignedLookup("acme-prod", "code", 2**62 + 5, 0.9123, False, 1_700_000_000)


def test_an_issued_id_verifies_to_what_was_signed_and_is_unique() -> None:
    signer = LookupIdSigner(b"k" * 32)
    first, second = signer.issue(HIT), signer.issue(HIT)
    assert first != second  # the nonce: two hits, two ids
    assert signer.verify(first) == HIT
    assert signer.verify(second) == HIT
    assert set(first) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    exact = SignedLookup("é", "default", 1, 1.0, True, 0)
    assert signer.verify(signer.issue(exact)) == exact
    verified = SignedLookup("acme", "code", 7, 0.88, False, 5, verified=True)
    assert signer.verify(signer.issue(verified)) == verified


def test_another_key_a_changed_byte_or_a_cut_id_resolve_to_nothing() -> None:
    signer = LookupIdSigner(b"k" * 32)
    token = signer.issue(HIT)
    assert LookupIdSigner(b"x" * 32).verify(token) is None
    for i in range(len(token)):
        changed = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
        assert signer.verify(changed) is None, i
    for cut in (0, 1, 10, len(token) - 1):
        assert signer.verify(token[:cut]) is None
    assert signer.verify("!!not base64!!") is None


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        LookupIdSigner(b"short")
