"""The Host check, remembered per name: the same answers as checking every time, and bounded."""

from __future__ import annotations

from vllama.api.security import _HOSTS_KEPT, Access, _split


def access() -> Access:
    return Access(
        keys=(), metrics_public=False, origins=(), hosts=("*.example.com",), loopback_bind=True
    )


HOSTS = ["127.0.0.1:11434", "localhost", "[::1]:8080", "a.example.com", "evil.test", "[zz", ""]


def test_remembered_verdicts_match_a_fresh_check_every_time() -> None:
    checker = access()
    for _ in range(3):  # first from the check, then from memory
        for host in HOSTS:
            parses = _split(f"//{host}") is not None
            assert checker.host_verdict(host) == (parses, parses and access().host_allowed(host))
    assert checker.host_verdict("[zz") == (False, False)
    assert checker.host_verdict("evil.test") == (True, False)
    assert checker.host_verdict("a.example.com") == (True, True)


def test_ever_new_hosts_do_not_grow_the_memory() -> None:
    checker = access()
    for n in range(_HOSTS_KEPT * 5):
        assert checker.host_verdict(f"h{n}.test") == (True, False)
        assert len(checker._host_verdicts) <= _HOSTS_KEPT
    assert checker.host_verdict("localhost") == (True, True)
