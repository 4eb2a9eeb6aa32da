"""The key-value store under the ledger, the bucket, the history and the spend: the same
behaviour from the memory store and the real Redis, and precise errors when Redis fails."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.conftest import free_port
from worker.store import (
    IndexChange,
    MemoryStore,
    RedisStore,
    SentinelUrl,
    Store,
    StoreError,
    online_replicas,
    redis_client,
)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    redis_store = RedisStore.from_url(request.getfixturevalue("redis_url"))
    try:
        yield redis_store
    finally:
        redis_store.close()


@pytest.fixture
def key(store: Store, namespace: str) -> Iterator[str]:
    name = f"{namespace}-store-{secrets.token_hex(4)}"
    yield name
    for suffix in ("", ":index", ":list", ":total"):
        store.delete(name + suffix)


def test_create_happens_once(store: Store, key: str) -> None:
    assert store.get(key) is None
    assert store.create(key, {"state": "NEW", "owner": "a"}, ttl_s=60) is True
    assert store.create(key, {"state": "NEW", "owner": "b"}, ttl_s=60) is False
    assert store.get(key) == {"state": "NEW", "owner": "a"}


def test_update_is_a_compare_and_set(store: Store, key: str) -> None:
    assert store.update(key, {}, {"state": "X"}, ttl_s=60) is False  # no record
    store.create(key, {"state": "NEW", "owner": "a"}, ttl_s=60)
    assert store.update(key, {"state": "NEW", "owner": "b"}, {"state": "X"}, ttl_s=60) is False
    assert store.update(key, {"state": "NEW", "token": ""}, {"state": "SUBMITTING"}, 60) is True
    assert store.get(key) == {"state": "SUBMITTING", "owner": "a"}


def test_an_index_change_goes_with_the_update_it_belongs_to(store: Store, key: str) -> None:
    index = f"{key}:index"
    store.create(key, {"state": "NEW"}, ttl_s=60)
    refused = store.update(key, {"state": "DONE"}, {"state": "X"}, 60, IndexChange(index, "r", "1"))
    assert refused is False
    assert store.get(index) is None
    assert store.update(key, {"state": "NEW"}, {"state": "S"}, 60, IndexChange(index, "r", "1"))
    assert store.get(index) == {"r": "1"}
    assert store.update(key, {"state": "S"}, {"state": "D"}, 60, IndexChange(index, "r", None))
    assert not store.get(index)


def test_put_replaces_the_stored_values(store: Store, key: str) -> None:
    store.put(key, {"a": "1", "b": "2"}, ttl_s=60)
    store.put(key, {"a": "3"}, ttl_s=60)
    assert store.get(key) == {"a": "3"}


def test_a_list_keeps_its_newest_values_first(store: Store, key: str) -> None:
    for value in ("1", "2", "3", "4"):
        store.push(f"{key}:list", value, keep=3, ttl_s=60)
    assert store.items(f"{key}:list") == ["4", "3", "2"]
    assert store.items(f"{key}:missing") == []


def test_numbers_add_up_from_zero(store: Store, key: str) -> None:
    assert store.number(f"{key}:total") == 0.0
    assert store.add(f"{key}:total", 0.25, ttl_s=60) == pytest.approx(0.25)
    assert store.add(f"{key}:total", 1.5, ttl_s=60) == pytest.approx(1.75)
    assert store.number(f"{key}:total") == pytest.approx(1.75)


def test_keys_lists_what_starts_with_a_prefix(store: Store, key: str) -> None:
    store.create(f"{key}:list", {"a": "1"}, ttl_s=60)
    store.create(f"{key}:total", {"a": "1"}, ttl_s=60)
    store.create(f"{key}-other", {"a": "1"}, ttl_s=60)
    assert sorted(store.keys(f"{key}:")) == [f"{key}:list", f"{key}:total"]
    store.delete(f"{key}-other")


def test_keys_skips_lapsed_records() -> None:
    store = MemoryStore()
    store.create("p:gone", {"a": "1"}, ttl_s=0)
    store.create("p:kept", {"a": "1"}, ttl_s=60)
    assert store.keys("p:") == ["p:kept"]


def test_a_record_lapses_with_its_ttl() -> None:
    store = MemoryStore()
    assert store.create("k", {"a": "1"}, ttl_s=0) is True
    assert store.get("k") is None  # a zero TTL has already lapsed
    assert store.create("k", {"a": "2"}, ttl_s=60) is True


def test_an_unreachable_redis_is_a_store_error_without_the_password() -> None:
    password = "s3cret-" + secrets.token_hex(4)
    store = RedisStore.from_url(f"redis://:{password}@127.0.0.1:{free_port()}/0")
    with pytest.raises(StoreError) as raised:
        store.get("anything")
    assert "ConnectionError" in str(raised.value)
    assert password not in str(raised.value)


def test_a_replicated_update_is_applied_and_counts_the_replicas(store: Store, key: str) -> None:
    """The shared Redis has no replica: the update applies, and none acknowledges it
    (memory has none either); a refused compare-and-set applies nothing."""
    store.create(key, {"state": "NEW"}, ttl_s=60)
    assert store.update_replicated(
        key, {"state": "NEW"}, {"state": "S"}, 60, replicas=1, timeout_s=0.05
    ) == (True, 0)
    assert store.update_replicated(
        key, {"state": "NEW"}, {"state": "X"}, 60, replicas=1, timeout_s=0.05
    ) == (False, 0)
    assert store.get(key) == {"state": "S"}
    assert store.replicas_online() == 0


def test_online_replicas_are_counted_from_info_replication() -> None:
    info = {
        "role": "master",
        "connected_slaves": 3,
        "slave0": {"ip": "10.0.0.1", "port": 6379, "state": "online", "lag": 0},
        "slave1": {"ip": "10.0.0.2", "port": 6379, "state": "wait_bgsave", "lag": 0},
        "slave2": {"ip": "10.0.0.3", "port": 6379, "state": "online", "lag": 1},
        "slave_read_only": 1,
    }
    assert online_replicas(info) == 2
    assert online_replicas({"role": "master", "connected_slaves": 0}) == 0


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        (
            "redis+sentinel://s1:26380,s2,[::1]:26381/segmind",
            SentinelUrl((("s1", 26380), ("s2", 26379), ("::1", 26381)), "segmind"),
        ),
        (
            "rediss+sentinel://app:p%40ss@s1:1/segmind/3",
            SentinelUrl((("s1", 1),), "segmind", 3, "app", "p@ss", tls=True),
        ),
        (
            "redis+sentinel://:secret@10.0.0.1/mymaster/0",
            SentinelUrl((("10.0.0.1", 26379),), "mymaster", 0, None, "secret"),
        ),
    ],
)
def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database(
    url: str, parsed: SentinelUrl
) -> None:
    assert SentinelUrl.parse(url) == parsed


@pytest.mark.parametrize(
    "url",
    [
        "redis://:secret@host/0",
        "redis+sentinel://:secret@/segmind",
        "redis+sentinel://:secret@host:x/segmind",
        "redis+sentinel://:secret@host:70000/segmind",
        "redis+sentinel://:secret@host",
        "redis+sentinel://:secret@host/segmind/zero",
        "redis+sentinel://:secret@host/segmind/0/more",
        "redis+sentinel://:secret@host/segmind?db=1",
    ],
)
def test_an_unusable_sentinel_url_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(ValueError, match="Sentinel") as refused:
        SentinelUrl.parse(url)
    assert "secret" not in str(refused.value)


def test_sentinels_that_do_not_answer_are_a_store_error() -> None:
    port = free_port()
    client = redis_client(
        f"redis+sentinel://:secret@127.0.0.1:{port}/segmind", decode_responses=True
    )
    store = RedisStore(client)
    with pytest.raises(StoreError) as failed:
        store.get("anything")  # no Sentinel listens: no primary can be found
    assert "secret" not in str(failed.value)
    store.close()
