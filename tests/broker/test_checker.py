"""The consistency checker (examples/broker/checker.py) on synthetic histories."""

from __future__ import annotations

from examples.broker.checker import Attempt, check


def ack(
    producer: str,
    seq: int,
    offset: int | None,
    sent: float,
    done: float,
    *,
    partition: int = 0,
    batch: int | None = None,
) -> Attempt:
    return Attempt(
        producer=producer,
        seq=seq,
        partition=partition,
        value=f"{producer}-{seq}".encode(),
        sent=sent,
        done=done,
        offset=offset,
        error="" if offset is not None else "timeout",
        batch=batch if batch is not None else seq,
    )


def logs(history: list[Attempt], nodes: int = 3) -> dict[str, dict[int, dict[int, bytes]]]:
    """Every replica holding exactly the acked values at their offsets."""
    one: dict[int, dict[int, bytes]] = {}
    for a in history:
        if a.offset is not None:
            one.setdefault(a.partition, {})[a.offset] = a.value
    return {f"n{i}": {p: dict(log) for p, log in one.items()} for i in range(nodes)}


def clean_history() -> list[Attempt]:
    return [
        ack("a", 0, 2, 0.0, 1.0),
        ack("b", 0, 3, 0.5, 1.2),  # concurrent with a-0: either order is fine
        ack("a", 1, 4, 1.1, 2.0),
        ack("a", 2, None, 2.1, 5.0),  # timed out, never committed
        ack("b", 1, 6, 1.3, 2.5),
        ack("a", 3, 1, 0.0, 0.4, partition=1),
    ]


def test_clean_history_passes() -> None:
    history = clean_history()
    report = check(history, logs(history))
    assert report.ok, report.text()
    assert report.summary() == "acked=5 lost=0 duplicated=0 reordered=0 divergent=0"
    assert report.attempted == 6 and report.failed == 1 and report.unacked_present == 0
    assert report.replicas == 3 and report.records == 5


def test_unacked_value_that_committed_is_allowed() -> None:
    history = clean_history()
    replicas = logs(history)
    for log in replicas.values():
        log[0][5] = b"a-2"  # the timed-out produce did commit
    report = check(history, replicas)
    assert report.ok, report.text()
    assert report.unacked_present == 1


def test_lost_when_one_replica_misses_an_acked_record() -> None:
    history = clean_history()
    replicas = logs(history)
    del replicas["n1"][0][4]
    report = check(history, replicas)
    assert report.lost == 1 and not report.ok
    assert "lost: 'a-1' acked at 0/4, missing on n1 (nothing)" in report.text()


def test_lost_and_divergent_when_a_replica_holds_another_value() -> None:
    history = clean_history()
    replicas = logs(history)
    replicas["n2"][0][3] = b"a-2"
    report = check(history, replicas)
    assert report.lost == 1
    assert report.divergent == 1
    assert "divergent: 0/3 holds" in report.text()


def test_duplicated_value_at_two_offsets() -> None:
    history = clean_history()
    replicas = logs(history)
    for log in replicas.values():
        log[0][7] = b"a-0"  # written again by a retry
    report = check(history, replicas)
    assert report.duplicated == 1 and report.lost == 0
    assert "duplicated: 'a-0' at 0/2, 0/7" in report.text()


def test_duplicate_across_partitions_counts_too() -> None:
    history = clean_history()
    replicas = logs(history)
    for log in replicas.values():
        log[1][9] = b"a-0"
    assert check(history, replicas).duplicated == 1


def test_reordered_against_real_time() -> None:
    # b-0 was sent after a-0 was acknowledged at offset 5, yet it got offset 4.
    history = [ack("a", 0, 5, 0.0, 1.0), ack("b", 0, 4, 1.5, 2.0)]
    report = check(history, logs(history))
    assert report.reordered == 1 and not report.ok
    assert "reordered: 'b-0' got 0/4" in report.text()


def test_one_producer_offsets_must_increase_in_ack_order() -> None:
    history = [ack("a", 0, 5, 0.0, 1.0), ack("a", 1, 3, 1.0001, 2.0), ack("a", 2, 9, 2.1, 3.0)]
    assert check(history, logs(history)).reordered == 1


def test_concurrent_requests_may_commit_in_any_order() -> None:
    history = [ack("a", 0, 5, 0.0, 1.0), ack("b", 0, 4, 0.5, 1.5)]
    assert check(history, logs(history)).reordered == 0


def test_values_of_one_request_in_order() -> None:
    history = [
        ack("a", 0, 7, 0.0, 1.0, batch=1),
        ack("a", 1, 6, 0.0, 1.0, batch=1),
    ]
    assert check(history, logs(history)).reordered == 1


def test_phantom_value_fails() -> None:
    history = clean_history()
    replicas = logs(history)
    for log in replicas.values():
        log[0][10] = b"nobody-wrote-this"
    report = check(history, replicas)
    assert report.phantom == 1 and not report.ok


def test_replica_behind_is_reported_as_lost() -> None:
    history = clean_history()
    replicas = logs(history)
    replicas["n0"][0] = {}
    report = check(history, replicas)
    assert report.lost == 4  # every ack of partition 0


def test_history_round_trips_through_json() -> None:
    a = ack("a", 3, 17, 1.5, 2.5, partition=1)
    assert Attempt.from_json(a.to_json()) == a
    failed = ack("b", 1, None, 1.0, 2.0)
    assert Attempt.from_json(failed.to_json()) == failed


def test_empty_history_and_logs() -> None:
    report = check([], {"n0": {0: {}}})
    assert report.ok
    assert report.summary() == "acked=0 lost=0 duplicated=0 reordered=0 divergent=0"
