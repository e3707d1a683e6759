"""Tests of the sans-IO Raft core (examples/broker/raft.py).

Unit tests drive one :class:`RaftGroup` with hand-made messages; the scenario tests and
the randomized (hypothesis) test use :class:`Cluster`, a deterministic simulator: a
message bus with drop / partition / rewrite controls, seeded rngs, and every node
persisting through a :class:`MemoryLog` exactly as the Ready contract says, so that a
crash keeps only what was flushed.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from examples.broker.raft import (
    KIND_NOOP,
    AppendRequest,
    AppendResponse,
    Entry,
    Heartbeat,
    HeartbeatResponse,
    MemoryLog,
    Message,
    NotLeader,
    RaftGroup,
    Ready,
    Role,
    VoteRequest,
    VoteResponse,
)

G = 7  # group id used throughout

# --------------------------------------------------------------------------- helpers


def ents(*terms: int, start: int = 1) -> list[Entry]:
    """Entries with the given terms at consecutive indices from ``start``."""
    return [Entry(term=t, index=start + i, data=b"e%d" % (start + i)) for i, t in enumerate(terms)]


def mk(
    nid: int = 1,
    peers: Sequence[int] = (1, 2, 3),
    log: MemoryLog | None = None,
    *,
    seed: int = 0,
    **kw: Any,
) -> tuple[RaftGroup, MemoryLog]:
    log = log if log is not None else MemoryLog()
    return RaftGroup(G, nid, peers, log, rng=random.Random(seed), **kw), log


def persist(log: MemoryLog, rd: Ready) -> None:
    """Steps 1-4 and 6 of the Ready contract."""
    if rd.hard_state_changed is not None:
        log.save_state(*rd.hard_state_changed)
    if rd.truncate_from is not None:
        log.truncate_suffix(rd.truncate_from)
    if rd.entries_to_persist:
        log.append(rd.entries_to_persist)
    if rd.needs_flush:
        log.flush()
    if rd.commit_index is not None:
        log.save_commit(rd.commit_index)


def pump(node: RaftGroup, log: MemoryLog, committed: list[Entry] | None = None) -> list[Message]:
    """Handle every Ready of ``node``; returns the messages it wants sent."""
    out: list[Message] = []
    while (rd := node.ready()) is not None:
        persist(log, rd)
        out.extend(rd.messages)
        if committed is not None:
            committed.extend(rd.committed)
        node.advance(rd)
    return out


def role(node: RaftGroup) -> Role:
    return node.role  # (a call, so that mypy does not narrow across steps)


def of(msgs: Iterable[Message], kind: type[Any], dst: int | None = None) -> list[Any]:
    return [m for m in msgs if isinstance(m, kind) and (dst is None or m.dst == dst)]


def app(
    src: int,
    dst: int,
    term: int,
    prev: int,
    prev_term: int,
    entries: Sequence[Entry] = (),
    commit: int = 0,
) -> AppendRequest:
    return AppendRequest(
        group_id=G,
        term=term,
        src=src,
        dst=dst,
        prev_index=prev,
        prev_term=prev_term,
        entries=tuple(entries),
        leader_commit=commit,
    )


def vote_req(
    src: int, dst: int, term: int, last_index: int, last_term: int, pre: bool = False
) -> VoteRequest:
    return VoteRequest(
        group_id=G,
        term=term,
        src=src,
        dst=dst,
        last_log_index=last_index,
        last_log_term=last_term,
        pre_vote=pre,
    )


def vote_resp(src: int, dst: int, term: int, granted: bool, pre: bool = False) -> VoteResponse:
    return VoteResponse(group_id=G, term=term, src=src, dst=dst, granted=granted, pre_vote=pre)


def app_resp(
    src: int, dst: int, term: int, success: bool, match: int, hint: int = 0
) -> AppendResponse:
    return AppendResponse(
        group_id=G,
        term=term,
        src=src,
        dst=dst,
        success=success,
        match_index=match,
        reject_hint=hint,
    )


def make_leader(
    nid: int = 1, peers: Sequence[int] = (1, 2, 3), log: MemoryLog | None = None, **kw: Any
) -> tuple[RaftGroup, MemoryLog, list[Message]]:
    """A leader elected with the lowest-numbered voters' help; returns its first messages."""
    node, log = mk(nid, peers, log, **kw)
    voters = [p for p in peers if p != nid][: len(peers) // 2]
    node.campaign()
    pump(node, log)
    for v in voters:
        node.step(vote_resp(v, nid, node.term + 1, True, pre=True))
    pump(node, log)
    assert node.role is Role.CANDIDATE
    for v in voters:
        node.step(vote_resp(v, nid, node.term, True))
    assert node.is_leader
    return node, log, pump(node, log)


# --------------------------------------------------------------------------- term rules


def test_higher_term_append_makes_a_leader_step_down() -> None:
    leader, _, _ = make_leader()
    term = leader.term
    leader.step(app(3, 1, term + 2, 0, 0))
    assert leader.role is Role.FOLLOWER
    assert (leader.term, leader.voted_for, leader.leader_id) == (term + 2, None, 3)
    rd = leader.ready()
    assert rd is not None and rd.hard_state_changed == (term + 2, None)
    assert rd.soft_state is not None and rd.soft_state.role is Role.FOLLOWER
    assert rd.leader_changed == 3
    with pytest.raises(NotLeader) as exc:
        leader.propose(b"x")
    assert exc.value.leader_id == 3


def test_higher_term_response_makes_a_leader_step_down() -> None:
    leader, _, _ = make_leader()
    leader.step(app_resp(2, 1, leader.term + 1, False, 0))
    assert leader.role is Role.FOLLOWER and leader.leader_id is None


def test_stale_term_append_is_refused_and_told_the_current_term() -> None:
    node, log = mk(2, log=MemoryLog(ents(1, 1), term=5))
    node.step(app(1, 2, 3, 2, 1, ents(3, start=3), commit=3))
    assert node.last_index == 2 and node.commit_index == 0 and node.term == 5
    msgs = pump(node, log)
    assert msgs == [HeartbeatResponse(group_id=G, term=5, src=2, dst=1)]
    # ... and the deposed leader steps down on it.
    old, _ = mk(1, log=MemoryLog(term=3))
    old.step(msgs[0])
    assert old.term == 5 and old.role is Role.FOLLOWER


def test_stale_vote_response_is_ignored() -> None:
    node, log = mk(1, pre_vote=False)
    node.campaign()
    pump(node, log)
    assert node.role is Role.CANDIDATE and node.term == 1
    node.campaign()  # times out again: term 2
    pump(node, log)
    node.step(vote_resp(2, 1, 1, True))  # a grant for term 1
    assert node.role is Role.CANDIDATE
    node.step(vote_resp(2, 1, 2, True))
    assert node.is_leader


def test_messages_for_another_group_or_node_are_refused() -> None:
    node, _ = mk(1)
    with pytest.raises(ValueError):
        node.step(dataclasses.replace(app(2, 1, 1, 0, 0), group_id=G + 1))
    with pytest.raises(ValueError):
        node.step(app(2, 3, 1, 0, 0))
    node.step(app(9, 1, 1, 0, 0))  # not a voter: ignored
    assert node.term == 0 and node.ready() is None


# --------------------------------------------------------------------------- vote rules


def test_one_vote_per_term() -> None:
    node, log = mk(1)
    node.step(vote_req(2, 1, 2, 0, 0))
    node.step(vote_req(3, 1, 2, 0, 0))
    node.step(vote_req(2, 1, 2, 0, 0))  # a retransmission: same answer
    msgs = pump(node, log)
    assert [(m.dst, m.granted, m.term) for m in of(msgs, VoteResponse)] == [
        (2, True, 2),
        (3, False, 2),
        (2, True, 2),
    ]
    assert log.load_state() == (2, 2)


def test_vote_is_persisted_in_the_ready_that_carries_the_grant() -> None:
    node, log = mk(1)
    node.step(vote_req(2, 1, 4, 0, 0))
    rd = node.ready()
    assert rd is not None
    assert rd.hard_state_changed == (4, 2)
    assert of(rd.messages, VoteResponse)[0].granted
    assert log.load_state() == (0, None)  # the core does not write: the owner does
    persist(log, rd)
    node.advance(rd)
    # After a crash the vote is remembered: no second vote in term 4.
    again, log2 = mk(1, log=log.crash())
    assert (again.term, again.voted_for) == (4, 2)
    again.step(vote_req(3, 1, 4, 9, 9))
    assert not of(pump(again, log2), VoteResponse)[0].granted


@pytest.mark.parametrize(
    ("last_index", "last_term", "granted"),
    [
        (5, 1, False),  # lower last term loses, however long
        (1, 2, False),  # same last term, shorter log
        (2, 2, True),  # same last term, same length
        (3, 2, True),
        (1, 3, True),  # higher last term wins, however short
    ],
)
def test_vote_requires_an_up_to_date_log(last_index: int, last_term: int, granted: bool) -> None:
    node, log = mk(1, log=MemoryLog(ents(1, 2), term=2))
    node.step(vote_req(2, 1, 3, last_index, last_term))
    (resp,) = of(pump(node, log), VoteResponse)
    assert resp.granted is granted
    assert node.term == 3  # the term is adopted either way
    assert node.voted_for == (2 if granted else None)


def test_pre_vote_changes_neither_term_nor_vote() -> None:
    node, log = mk(1, log=MemoryLog(term=1))
    node.step(vote_req(2, 1, 2, 0, 0, pre=True))
    rd = node.ready()
    assert rd is not None and rd.hard_state_changed is None
    (resp,) = of(rd.messages, VoteResponse)
    assert resp.granted and resp.pre_vote and resp.term == 2
    assert (node.term, node.voted_for) == (1, None)
    node.advance(rd)
    # A stale pre-vote is rejected with our term.
    node.step(vote_req(3, 1, 0, 0, 0, pre=True))
    (resp,) = of(pump(node, log), VoteResponse)
    assert not resp.granted and resp.term == 1


def test_pre_candidate_keeps_its_term_then_campaigns_for_real() -> None:
    node, log = mk(1, log=MemoryLog(ents(1), term=1))
    for _ in range(20):
        node.tick()
        if node.role is Role.PRE_CANDIDATE:
            break
    assert node.role is Role.PRE_CANDIDATE and node.term == 1
    msgs = pump(node, log)
    reqs = of(msgs, VoteRequest)
    assert {m.dst for m in reqs} == {2, 3}
    assert all(
        m.pre_vote and m.term == 2 and (m.last_log_index, m.last_log_term) == (1, 1) for m in reqs
    )
    assert log.load_state() == (1, None)
    node.step(vote_resp(2, 1, 2, True, pre=True))
    assert role(node) is Role.CANDIDATE and (node.term, node.voted_for) == (2, 1)
    rd = node.ready()
    assert rd is not None and rd.hard_state_changed == (2, 1)
    assert all(not m.pre_vote and m.term == 2 for m in of(rd.messages, VoteRequest))
    persist(log, rd)
    node.advance(rd)
    node.step(vote_resp(3, 1, 2, True))
    assert node.is_leader


def test_pre_vote_rejected_by_a_majority_returns_to_follower() -> None:
    node, log = mk(1, log=MemoryLog(term=3))
    node.campaign()
    pump(node, log)
    node.step(vote_resp(2, 1, 3, False, pre=True))
    assert node.role is Role.PRE_CANDIDATE
    node.step(vote_resp(3, 1, 3, False, pre=True))
    assert role(node) is Role.FOLLOWER and node.term == 3


def test_pre_vote_rejection_from_a_higher_term_adopts_it() -> None:
    node, log = mk(1, log=MemoryLog(term=3))
    node.campaign()
    pump(node, log)
    node.step(vote_resp(2, 1, 7, False, pre=True))
    assert node.role is Role.FOLLOWER and node.term == 7


@pytest.mark.parametrize("pre", [True, False])
def test_votes_are_ignored_within_the_leader_lease(pre: bool) -> None:
    node, log = mk(2, log=MemoryLog(term=1))
    node.step(Heartbeat(group_id=G, term=1, src=1, dst=2, leader_commit=0))
    pump(node, log)
    node.step(vote_req(3, 2, 2, 5, 1, pre=pre))
    assert pump(node, log) == [] and node.term == 1
    for _ in range(10):  # an election timeout without hearing from the leader
        node.tick()
    pump(node, log)
    node.step(vote_req(3, 2, 2, 5, 1, pre=pre))
    (resp,) = of(pump(node, log), VoteResponse)
    assert resp.granted


def test_randomized_election_timeout_is_in_range() -> None:
    seen = set()
    for seed in range(200):
        node, _ = mk(1, seed=seed, election_ticks=10)
        ticks = 0
        while node.role is Role.FOLLOWER:
            node.tick()
            ticks += 1
        seen.add(ticks)
    assert min(seen) >= 10 and max(seen) < 20
    assert len(seen) >= 8  # actually randomized


def test_candidate_with_stale_log_cannot_win_and_falls_back() -> None:
    node, log = mk(1, log=MemoryLog(ents(1), term=1), pre_vote=False)
    node.campaign()
    pump(node, log)
    node.step(vote_resp(2, 1, 2, False))
    node.step(vote_resp(3, 1, 2, False))
    assert node.role is Role.FOLLOWER and node.term == 2 and node.voted_for == 1


# --------------------------------------------------------------------------- log matching


def test_append_rejected_on_missing_prev_with_hint_at_last_index() -> None:
    node, log = mk(2, log=MemoryLog(ents(1, 1), term=1))
    node.step(app(1, 2, 1, 7, 1, ents(1, start=8)))
    (resp,) = of(pump(node, log), AppendResponse)
    assert (resp.success, resp.match_index, resp.reject_hint) == (False, 7, 2)
    assert node.last_index == 2


def test_append_rejected_on_prev_term_mismatch_hint_skips_the_term() -> None:
    node, log = mk(2, log=MemoryLog(ents(1, 1, 3, 3, 3), term=3))
    node.step(app(1, 2, 4, 5, 2))  # leader has term 2 at index 5
    (resp,) = of(pump(node, log), AppendResponse)
    # Entries 3..5 have term 3 > 2: none of them can match; try prev = 2 next.
    assert (resp.success, resp.match_index, resp.reject_hint) == (False, 5, 2)
    assert node.last_index == 5


def test_conflicting_suffix_is_truncated_then_replaced() -> None:
    log = MemoryLog(ents(1, 1, 1), term=1)
    node, log = mk(2, log=log)
    new = ents(2, 2, start=2)
    node.step(app(1, 2, 2, 1, 1, new, commit=1))
    rd = node.ready()
    assert rd is not None
    assert rd.truncate_from == 2 and rd.entries_to_persist == new
    assert of(rd.messages, AppendResponse)[0].match_index == 3
    persist(log, rd)
    node.advance(rd)
    assert log.all_entries() == ents(1, start=1) + new
    assert log.durable_entries() == log.all_entries()


def test_matching_append_never_truncates_a_longer_log() -> None:
    node, _ = mk(2, log=MemoryLog(ents(1, 1, 1, 1, 1), term=1))
    node.step(app(1, 2, 1, 1, 1, ents(1, 1, start=2), commit=0))  # old, delayed
    rd = node.ready()
    assert rd is not None and rd.truncate_from is None and rd.entries_to_persist == []
    (resp,) = of(rd.messages, AppendResponse)
    assert resp.success and resp.match_index == 3
    node.advance(rd)
    assert node.last_index == 5


def test_never_truncates_committed_entries() -> None:
    node, _ = mk(2, log=MemoryLog(ents(1, 1, 1), term=1, commit=2))
    assert node.commit_index == 2
    with pytest.raises(AssertionError, match="committed"):
        node.step(app(1, 2, 2, 1, 1, ents(2, start=2)))


def test_follower_commit_is_min_of_leader_commit_and_last_new_entry() -> None:
    node, log = mk(2, log=MemoryLog(ents(1, 1, 1), term=1))
    node.step(app(1, 2, 1, 0, 0, ents(1), commit=3))
    # Entries 2 and 3 were not verified by this request: only 1 may commit.
    assert node.commit_index == 1
    node.step(app(1, 2, 1, 1, 1, ents(1, start=2), commit=3))
    assert node.commit_index == 2
    node.step(app(1, 2, 1, 2, 1, (), commit=1))  # commit never goes back
    assert node.commit_index == 2
    committed: list[Entry] = []
    pump(node, log, committed)
    assert committed == ents(1, 1)
    assert log.load_commit() == 2


def test_follower_applies_only_durable_entries() -> None:
    node, log = mk(2, log=MemoryLog(term=1))
    node.step(app(1, 2, 1, 0, 0, ents(1, 1), commit=2))
    rd = node.ready()
    assert rd is not None and node.commit_index == 2
    assert rd.committed == [] and rd.entries_to_persist == ents(1, 1)
    persist(log, rd)
    node.advance(rd)
    rd = node.ready()
    assert rd is not None and rd.committed == ents(1, 1) and rd.commit_index == 2


def test_heartbeat_advances_commit_within_the_log() -> None:
    node, log = mk(2, log=MemoryLog(ents(1, 1, 1), term=1))
    node.step(Heartbeat(group_id=G, term=1, src=1, dst=2, leader_commit=2))
    assert node.commit_index == 2 and node.leader_id == 1
    assert of(pump(node, log), HeartbeatResponse)[0].term == 1


# --------------------------------------------------------------------------- leader / commit


def test_new_leader_appends_a_noop_and_probes_followers() -> None:
    leader, log, msgs = make_leader(log=MemoryLog(ents(1, 1), term=1))
    assert leader.term == 2
    noop = Entry(term=2, index=3, data=b"", kind=KIND_NOOP)
    assert log.all_entries()[-1] == noop
    reqs = of(msgs, AppendRequest)
    assert {m.dst for m in reqs} == {2, 3}
    assert all((m.prev_index, m.prev_term, m.entries) == (2, 1, (noop,)) for m in reqs)


def test_commit_only_entries_of_the_current_term() -> None:
    # Index 2 (term 2) is on a majority (leader + node 2) but must not commit until
    # an entry of the leader's own term (its no-op) is.
    leader, log, _ = make_leader(log=MemoryLog(ents(1, 2), term=2))
    assert leader.term == 3 and leader.last_index == 3
    leader.step(app_resp(2, 1, 3, True, 2))
    assert leader.commit_index == 0
    assert pump(leader, log) == [] or leader.commit_index == 0
    leader.step(app_resp(2, 1, 3, True, 3))
    assert leader.commit_index == 3
    committed: list[Entry] = []
    pump(leader, log, committed)
    assert [e.index for e in committed] == [1, 2, 3]


def test_leader_counts_itself_only_after_its_own_flush() -> None:
    leader, log, _ = make_leader()
    idx = leader.propose(b"v")
    rd = leader.ready()
    assert rd is not None and [e.index for e in rd.entries_to_persist] == [idx]
    # A follower acks before the leader's fsync finished (ready not advanced yet).
    leader.step(app_resp(2, 1, leader.term, True, idx))
    assert leader.commit_index == idx - 1  # the no-op, which the leader had flushed
    assert leader.ready() is None  # one Ready at a time
    persist(log, rd)
    leader.advance(rd)
    assert leader.commit_index == idx
    committed: list[Entry] = []
    pump(leader, log, committed)
    assert [e.data for e in committed] == [b"", b"v"]


def test_five_nodes_majority_of_followers_commit_but_leader_applies_after_flush() -> None:
    leader, log, _ = make_leader(peers=(1, 2, 3, 4, 5))
    idx = leader.propose(b"v")
    rd = leader.ready()
    assert rd is not None
    for peer in (2, 3):
        leader.step(app_resp(peer, 1, leader.term, True, idx))
    assert leader.commit_index == idx - 1  # 2 followers, leader not durable: 2 of 5
    leader.step(app_resp(4, 1, leader.term, True, idx))
    assert leader.commit_index == idx  # durable on 3 of 5 without the leader
    persist(log, rd)
    leader.advance(rd)
    rd = leader.ready()
    assert rd is not None and [e.index for e in rd.committed] == [1, idx]


def test_single_node_group_commits_after_flush() -> None:
    node, log = mk(1, peers=(1,))
    node.campaign()
    assert node.is_leader and node.term == 1
    idx = node.propose(b"solo")
    assert node.commit_index == 0
    committed: list[Entry] = []
    pump(node, log, committed)
    assert node.commit_index == idx == 2
    assert [e.data for e in committed] == [b"", b"solo"]
    assert log.durable_entries()[-1].data == b"solo"


def test_propose_on_a_follower_raises_not_leader_with_hint() -> None:
    node, _ = mk(2)
    with pytest.raises(NotLeader) as exc:
        node.propose(b"x")
    assert exc.value.leader_id is None
    node.step(Heartbeat(group_id=G, term=1, src=3, dst=2, leader_commit=0))
    with pytest.raises(NotLeader) as exc:
        node.propose(b"x")
    assert exc.value.leader_id == 3


def test_proposals_are_batched_into_one_append_per_follower() -> None:
    leader, log, _ = make_leader()
    leader.step(app_resp(2, 1, leader.term, True, 1))
    pump(leader, log)
    for i in range(5):
        leader.propose(b"p%d" % i)
    reqs = of(pump(leader, log), AppendRequest, dst=2)
    assert len(reqs) == 1 and [e.index for e in reqs[0].entries] == [2, 3, 4, 5, 6]


def test_pipelined_appends_up_to_max_inflight() -> None:
    leader, log, _ = make_leader(max_inflight_appends=3, max_batch_bytes=1)
    leader.step(app_resp(2, 1, leader.term, True, 1))  # probe answered: replicate
    pump(leader, log)
    for i in range(10):
        leader.propose(b"p%d" % i)
    reqs = of(pump(leader, log), AppendRequest, dst=2)
    # One entry per batch (max_batch_bytes), three outstanding, optimistic next index.
    assert [(m.prev_index, [e.index for e in m.entries]) for m in reqs] == [
        (1, [2]),
        (2, [3]),
        (3, [4]),
    ]
    leader.step(app_resp(2, 1, leader.term, True, 3))  # frees two slots
    reqs = of(pump(leader, log), AppendRequest, dst=2)
    assert [m.prev_index for m in reqs] == [4, 5]


def test_rejection_falls_back_to_probing_with_the_hint() -> None:
    leader, log, first = make_leader(log=MemoryLog(ents(1, 1, 1, 1, 1), term=1))
    term = leader.term
    (probe,) = of(first, AppendRequest, dst=2)
    assert probe.prev_index == 5
    leader.step(app_resp(2, 1, term, False, 5, hint=2))  # node 2 has only 1..2
    (req,) = of(pump(leader, log), AppendRequest, dst=2)
    assert req.prev_index == 2 and [e.index for e in req.entries] == [3, 4, 5, 6]
    leader.propose(b"x")
    assert of(pump(leader, log), AppendRequest, dst=2) == []  # probing: one at a time
    leader.step(app_resp(2, 1, term, False, 5, hint=2))  # stale rejection: ignored
    assert of(pump(leader, log), AppendRequest, dst=2) == []
    leader.step(app_resp(2, 1, term, True, 6))
    (req,) = of(pump(leader, log), AppendRequest, dst=2)
    assert req.prev_index == 6 and [e.data for e in req.entries] == [b"x"]


def test_stale_rejection_does_not_disturb_replication() -> None:
    leader, log, _ = make_leader(max_batch_bytes=1)
    term = leader.term
    leader.step(app_resp(2, 1, term, True, 1))
    leader.propose(b"a")
    leader.propose(b"b")
    assert len(of(pump(leader, log), AppendRequest, dst=2)) == 2
    leader.step(app_resp(2, 1, term, True, 3))
    leader.step(app_resp(2, 1, term, False, 1, hint=0))  # a delayed answer to an old probe
    leader.propose(b"c")
    leader.propose(b"d")
    reqs = of(pump(leader, log), AppendRequest, dst=2)
    assert [m.prev_index for m in reqs] == [3, 4]  # still pipelining from match 3


def test_lost_pipelined_append_is_resent_after_heartbeat() -> None:
    leader, log, _ = make_leader()
    term = leader.term
    leader.step(app_resp(2, 1, term, True, 1))
    pump(leader, log)
    leader.propose(b"lost")
    assert len(of(pump(leader, log), AppendRequest, dst=2)) == 1  # ... and dropped
    resent: list[AppendRequest] = []
    for _ in range(4):
        leader.tick()
        if of(pump(leader, log), Heartbeat, dst=2):
            leader.step(HeartbeatResponse(group_id=G, term=term, src=2, dst=1))
            resent += of(pump(leader, log), AppendRequest, dst=2)
    assert resent and resent[0].prev_index == 1 and resent[0].entries[0].data == b"lost"


def test_report_unreachable_switches_to_probe() -> None:
    leader, log, _ = make_leader()
    term = leader.term
    leader.step(app_resp(2, 1, term, True, 1))
    pump(leader, log)
    leader.propose(b"a")
    pump(leader, log)
    leader.report_unreachable(2)
    leader.tick()
    pump(leader, log)
    leader.step(HeartbeatResponse(group_id=G, term=term, src=2, dst=1))
    (req,) = of(pump(leader, log), AppendRequest, dst=2)
    assert req.prev_index == 1


def test_heartbeats_every_heartbeat_ticks_with_clamped_commit() -> None:
    leader, log, _ = make_leader(heartbeat_ticks=3, election_ticks=30)
    term = leader.term
    leader.step(app_resp(2, 1, term, True, 1))
    pump(leader, log)
    assert leader.commit_index == 1
    beats = []
    for t in range(1, 10):
        leader.tick()
        hb = of(pump(leader, log), Heartbeat)
        if hb:
            beats.append(t)
            # node 3 never acked anything: it must not be told index 1 is committed
            assert {m.dst: m.leader_commit for m in hb} == {2: 1, 3: 0}
    assert beats == [3, 6, 9]


def test_check_quorum_leader_steps_down_without_majority_contact() -> None:
    leader, log, _ = make_leader(election_ticks=10)
    term = leader.term
    for _ in range(25):
        leader.tick()
        pump(leader, log)
        if not leader.is_leader:
            break
        leader.step(HeartbeatResponse(group_id=G, term=term, src=9, dst=1))  # not a voter
    assert leader.role is Role.FOLLOWER and leader.term == term and leader.leader_id is None
    with pytest.raises(NotLeader):
        leader.propose(b"x")


def test_check_quorum_leader_stays_with_majority_contact() -> None:
    leader, log, _ = make_leader(election_ticks=10)
    for _ in range(50):
        leader.tick()
        if of(pump(leader, log), Heartbeat, dst=2):
            leader.step(HeartbeatResponse(group_id=G, term=leader.term, src=2, dst=1))
    assert leader.is_leader


# --------------------------------------------------------------------------- Ready contract


def test_ready_is_exclusive_until_advance() -> None:
    node, log = mk(1)
    assert node.ready() is None and not node.has_ready()
    node.step(vote_req(2, 1, 1, 0, 0))
    rd = node.ready()
    assert rd is not None
    node.step(vote_req(3, 1, 2, 0, 0))
    assert node.ready() is None and not node.has_ready()
    persist(log, rd)
    node.advance(rd)
    with pytest.raises(RuntimeError):
        node.advance(rd)
    rd2 = node.ready()
    assert rd2 is not None and rd2.hard_state_changed == (2, 3)


def test_truncation_while_a_ready_is_outstanding() -> None:
    node, log = mk(2, log=MemoryLog(term=1))
    node.step(app(1, 2, 1, 0, 0, ents(1, 1, 1)))
    rd = node.ready()  # the owner is now persisting 1..3 (term 1) ...
    assert rd is not None and len(rd.entries_to_persist) == 3
    # ... when a new leader (term 2) overwrites index 2 onwards.
    new = ents(2, 2, start=2)
    node.step(app(3, 2, 2, 1, 1, new))
    persist(log, rd)
    node.advance(rd)
    assert node.durable_index == 1
    rd = node.ready()
    assert rd is not None and rd.truncate_from == 2 and rd.entries_to_persist == new
    # The ack for the new entries travels in this Ready: after they are persisted.
    assert of(rd.messages, AppendResponse, dst=3)[0].match_index == 3
    persist(log, rd)
    node.advance(rd)
    assert log.durable_entries() == ents(1) + new and node.durable_index == 3
    assert node.ready() is None


def test_restart_reloads_hard_state_log_and_commit() -> None:
    leader, log, _ = make_leader()
    leader.step(app_resp(2, 1, leader.term, True, 1))
    leader.propose(b"a")
    pump(leader, log)
    leader.step(app_resp(2, 1, leader.term, True, 2))
    pump(leader, log)
    assert leader.commit_index == 2 and log.load_commit() == 2
    again, _ = mk(1, log=log.crash())
    assert (again.term, again.voted_for, again.commit_index) == (leader.term, 1, 2)
    assert again.role is Role.FOLLOWER and again.last_index == 2
    assert again.ready() is None  # committed entries are not handed out twice


# --------------------------------------------------------------------------- simulator


class Cluster:
    """A deterministic in-memory cluster of one Raft group.

    Messages go through a FIFO queue; ``settle()`` delivers until it is empty.  A message
    is dropped when its destination is down, the (src, dst) link is cut, or ``rewrite``
    returns None (it may also return a modified message).
    """

    def __init__(
        self,
        n: int = 3,
        *,
        seed: int = 0,
        logs: dict[int, MemoryLog] | None = None,
        committed: Sequence[Entry] = (),
        async_persist: bool = False,
        **opts: Any,
    ) -> None:
        self.ids = list(range(1, n + 1))
        self.quorum = n // 2 + 1
        self.seed = seed
        self.opts: dict[str, Any] = {"election_ticks": 10, "heartbeat_ticks": 1, **opts}
        self.logs = dict(logs) if logs else {i: MemoryLog() for i in self.ids}
        self.nodes: dict[int, RaftGroup] = {}
        self.down: set[int] = set()
        self.cut: set[tuple[int, int]] = set()
        self.rewrite: Callable[[Message], Message | None] | None = None
        self.queue: deque[Message] = deque()
        self.committed: list[Entry] = list(committed)  # global, index i at [i - 1]
        self.commit_term: list[int] = [0] * len(committed)  # lowest term seen committing
        self.leaders: dict[int, int] = {}  # term -> the leader of that term
        self.sent = 0
        self.truncations = 0
        self.boots = 0
        self.crash_mid: set[int] = set()
        self.async_persist = async_persist
        self.pending: dict[int, Ready] = {}  # async mode: Ready being persisted
        for i in self.ids:
            self._boot(i)

    # ---- nodes

    def _boot(self, i: int) -> None:
        self.boots += 1
        rng = random.Random(self.seed * 1_000_003 + self.boots * 101 + i)
        self.nodes[i] = RaftGroup(G, i, self.ids, self.logs[i], rng=rng, **self.opts)

    def live(self) -> list[int]:
        return [i for i in self.ids if i not in self.down]

    def crash(self, i: int) -> None:
        """Kill node i: only what it flushed survives."""
        self.down.add(i)
        self.logs[i] = self.logs[i].crash()
        self.crash_mid.discard(i)
        self.pending.pop(i, None)

    def restart(self, i: int) -> None:
        self.down.discard(i)
        self._boot(i)

    def process(self, i: int) -> None:
        """Run node i's Ready loop (the node layer's job).

        With ``async_persist`` a Ready's writes are issued now but its flush, sends and
        ``advance`` wait for :meth:`complete` (an fsync running in an executor), while
        the node keeps stepping messages and ticking.
        """
        if self.async_persist:
            if i not in self.pending:
                self._start(i)
            return
        while i not in self.down and self._start(i):
            self._finish(i)

    def _start(self, i: int) -> bool:
        node, log = self.nodes[i], self.logs[i]
        rd = node.ready()
        if rd is None:
            return False
        if rd.hard_state_changed is not None:
            log.save_state(*rd.hard_state_changed)
        if rd.truncate_from is not None:
            log.truncate_suffix(rd.truncate_from)
            self.truncations += 1
        if rd.entries_to_persist:
            log.append(rd.entries_to_persist)
        if i in self.crash_mid and rd.needs_flush:
            self.crash(i)  # died before the fsync: nothing else was sent
            return False
        if self.async_persist:
            # Permitted optimization: a leader's appends and heartbeats need not wait
            # for its own fsync (it counts itself only once durable).
            early = [m for m in rd.messages if isinstance(m, AppendRequest | Heartbeat)]
            rd.messages = [m for m in rd.messages if not isinstance(m, AppendRequest | Heartbeat)]
            self.queue.extend(early)
            self.sent += len(early)
        self.pending[i] = rd
        return True

    def _finish(self, i: int) -> None:
        node, log, rd = self.nodes[i], self.logs[i], self.pending.pop(i)
        if rd.needs_flush:
            log.flush()
        self.queue.extend(rd.messages)
        self.sent += len(rd.messages)
        for e in rd.committed:
            self._committed(i, e)
        if rd.commit_index is not None:
            log.save_commit(rd.commit_index)
        node.advance(rd)
        if node.is_leader:
            assert self.leaders.setdefault(node.term, i) == i, "two leaders in one term"

    def complete(self, i: int) -> None:
        """The outstanding Ready of node i (async mode) is durable: finish it."""
        if i in self.pending:
            self._finish(i)
            self._start(i)

    def complete_all(self) -> None:
        for _ in range(10):
            if not self.pending:
                return
            for i in sorted(self.pending):
                self.complete(i)

    def _committed(self, i: int, e: Entry) -> None:
        k = e.index - 1
        term = self.nodes[i].term
        if k < len(self.committed):
            assert self.committed[k] == e, f"node {i} committed {e}, not {self.committed[k]}"
            self.commit_term[k] = min(self.commit_term[k], term)
        else:
            assert k == len(self.committed), f"node {i} committed {e} out of order"
            self.committed.append(e)
            self.commit_term.append(term)

    # ---- network

    def deliver(self, m: Message) -> None:
        if m.dst in self.down or (m.src, m.dst) in self.cut:
            return
        if self.rewrite is not None:
            m2 = self.rewrite(m)
            if m2 is None:
                return
            m = m2
        self.nodes[m.dst].step(m)
        self.process(m.dst)

    def settle(self, limit: int = 100_000) -> None:
        while self.queue and limit:
            limit -= 1
            self.deliver(self.queue.popleft())

    def partition(self, *groups: Iterable[int]) -> None:
        """Cut every link between different groups (nodes not listed form a group)."""
        sides = [set(g) for g in groups]
        rest = set(self.ids).difference(*sides)
        if rest:
            sides.append(rest)
        self.cut = {(a, b) for x, y in itertools.permutations(sides, 2) for a in x for b in y}

    def heal(self) -> None:
        self.cut = set()

    # ---- time

    def tick(self, rounds: int = 1) -> None:
        for _ in range(rounds):
            for i in self.live():
                self.nodes[i].tick()
                self.process(i)
            self.settle()

    def leader(self, among: Iterable[int] | None = None) -> int | None:
        """A leader all of ``among`` (default: live nodes) agree on, if any."""
        group = list(among) if among is not None else self.live()
        for i in group:
            node = self.nodes[i]
            if node.is_leader and all(
                self.nodes[j].leader_id == i and self.nodes[j].term == node.term for j in group
            ):
                return i
        return None

    def wait_leader(self, among: Iterable[int] | None = None, max_rounds: int = 300) -> int:
        group = list(among) if among is not None else None
        for _ in range(max_rounds):
            leader = self.leader(group)
            if leader is not None:
                return leader
            self.tick()
        raise AssertionError(f"no leader after {max_rounds} rounds")

    def propose(self, data: bytes, via: int | None = None) -> tuple[int, int, int]:
        """Propose on ``via`` (default: the leader); returns (node, index, term)."""
        i = via if via is not None else self.wait_leader()
        index = self.nodes[i].propose(data)
        self.process(i)
        return i, index, self.nodes[i].term

    def is_committed(self, index: int, data: bytes) -> bool:
        return len(self.committed) >= index and self.committed[index - 1].data == data

    def log_of(self, i: int) -> list[Entry]:
        node = self.nodes[i]
        return node.entries(1, node.last_index + 1)

    # ---- invariants

    def check(self) -> None:
        live = self.live()
        logs = {i: self.log_of(i) for i in live}
        # Log matching: same index and term => identical logs up to there.
        for a, b in itertools.combinations(live, 2):
            la, lb = logs[a], logs[b]
            k = min(len(la), len(lb))
            while k and la[k - 1].term != lb[k - 1].term:
                k -= 1
            assert la[:k] == lb[:k], f"log matching violated between {a} and {b}"
        for i in live:
            node = self.nodes[i]
            # What a node considers committed agrees with what any node ever did
            # (state machine safety), and joins the global record.
            c = node.commit_index
            assert c <= len(logs[i]), f"node {i} commit {c} beyond its log"
            k = min(c, len(self.committed))
            assert logs[i][:k] == self.committed[:k], f"node {i} diverges below commit"
            if c > k:
                self.committed.extend(logs[i][k:c])
                self.commit_term.extend([node.term] * (c - k))
            if node.is_leader:
                assert self.leaders.setdefault(node.term, i) == i, "two leaders in one term"
                # Leader completeness: entries committed in earlier (or this) terms.
                need = 0
                for k in range(len(self.committed) - 1, -1, -1):
                    if self.commit_term[k] <= node.term:
                        need = k + 1
                        break
                assert logs[i][:need] == self.committed[:need], (
                    f"leader {i} (term {node.term}) lacks committed entries"
                )
        self.check_durable()

    def check_durable(self) -> None:
        """Committed entries are durable (flushed) on a majority, crashed nodes included."""
        c = len(self.committed)
        if not c:
            return
        prefixes = []
        for i in self.ids:
            durable = self.logs[i].durable_entries()
            if durable[:c] == self.committed:
                prefixes.append(c)
                continue
            k = 0
            while k < min(c, len(durable)) and durable[k] == self.committed[k]:
                k += 1
            prefixes.append(k)
        prefixes.sort(reverse=True)
        assert prefixes[self.quorum - 1] == c, (
            f"committed entries not durable on a majority: {prefixes}"
        )


def converge(c: Cluster, rounds: int = 100) -> None:
    """Tick until every live node has the leader's log and commit index."""
    for _ in range(rounds):
        c.tick()
        leader = c.leader()
        if leader is None:
            continue
        target = c.nodes[leader]
        if all(
            c.nodes[i].commit_index == target.commit_index == target.last_index
            and c.nodes[i].applied_index == target.commit_index
            for i in c.live()
        ):
            return
    raise AssertionError("cluster did not converge")


# --------------------------------------------------------------------------- scenarios


@pytest.mark.parametrize("n", [3, 5])
def test_cluster_elects_one_leader(n: int) -> None:
    c = Cluster(n, seed=n)
    leader = c.wait_leader()
    c.check()
    assert all(c.nodes[i].leader_id == leader for i in c.ids)
    # and it stays stable while the network is healthy
    term = c.nodes[leader].term
    c.tick(100)
    assert c.leader() == leader and c.nodes[leader].term == term


@pytest.mark.parametrize("n", [3, 5])
def test_proposals_commit_on_a_majority(n: int) -> None:
    c = Cluster(n, seed=10 + n)
    leader = c.wait_leader()
    followers = [i for i in c.ids if i != leader]
    # Take down all the minority can lose: still commits.
    for i in followers[: n - c.quorum]:
        c.crash(i)
    _, idx, _ = c.propose(b"on-majority")
    c.settle()
    assert c.is_committed(idx, b"on-majority")
    c.check()
    # One more down: no majority, nothing commits.
    c.crash(followers[n - c.quorum])
    _, idx2, _ = c.propose(b"no-majority", via=leader)
    c.tick(3)
    assert len(c.committed) < idx2
    c.check()


def test_follower_partition_heals_and_catches_up() -> None:
    c = Cluster(3, seed=3, max_batch_bytes=300, max_inflight_appends=2)
    leader = c.wait_leader()
    lagger = next(i for i in c.ids if i != leader)
    c.partition([lagger])
    for i in range(60):
        c.propose(b"record-%03d" % i, via=leader)
        c.settle()
    assert len(c.committed) == 61  # no-op + 60
    assert c.nodes[lagger].last_index == 1
    before = c.sent
    c.heal()
    converge(c)
    assert c.log_of(lagger) == c.log_of(leader)
    assert c.logs[lagger].durable_entries() == c.committed
    assert c.sent - before > 10  # batched by max_batch_bytes, not one giant message
    c.check()


def test_leader_cut_from_majority_steps_down_and_its_writes_are_truncated() -> None:
    c = Cluster(5, seed=5)
    old = c.wait_leader()
    _, idx, _ = c.propose(b"before", via=old)
    c.settle()
    assert c.is_committed(idx, b"before")
    buddy = next(i for i in c.ids if i != old)
    majority = [i for i in c.ids if i not in (old, buddy)]
    c.partition([old, buddy], majority)
    # The isolated leader still accepts writes until check-quorum fires...
    doomed = [c.propose(b"doomed-%d" % k, via=old)[1] for k in range(3)]
    for _ in range(25):
        c.tick()
        if not c.nodes[old].is_leader:
            break
    # ... then steps down within two election timeouts and refuses writes.
    assert c.nodes[old].role is not Role.LEADER
    with pytest.raises(NotLeader):
        c.nodes[old].propose(b"refused")
    assert doomed and not any(e.data.startswith(b"doomed") for e in c.committed)
    new = c.wait_leader(majority)
    assert new != old and c.nodes[new].term > c.nodes[old].term
    _, idx2, _ = c.propose(b"after", via=new)
    c.settle()
    assert c.is_committed(idx2, b"after")
    assert not any(e.data.startswith(b"doomed") for e in c.committed)
    c.check()
    c.heal()
    converge(c)
    assert c.leader() == new
    for i in c.ids:
        log = c.log_of(i)
        assert log == c.log_of(new)
        assert not any(e.data.startswith(b"doomed") for e in log)
    c.check()


@pytest.mark.parametrize("pre_vote", [True, False])
def test_pre_vote_keeps_a_rejoining_node_from_disrupting_the_leader(pre_vote: bool) -> None:
    c = Cluster(3, seed=7, pre_vote=pre_vote, check_quorum=pre_vote)
    leader = c.wait_leader()
    term = c.nodes[leader].term
    loner = next(i for i in c.ids if i != leader)
    c.partition([loner])
    c.tick(100)  # many election timeouts alone
    c.heal()
    c.tick(30)
    if pre_vote:
        assert c.nodes[loner].term == term
        assert c.leader() == leader and c.nodes[leader].term == term
    else:
        # Without pre-vote the loner's inflated term forces an election on rejoin.
        assert c.nodes[c.wait_leader()].term > term
    c.check()


def test_restart_of_nodes_keeps_committed_entries() -> None:
    c = Cluster(3, seed=11)
    leader = c.wait_leader()
    for i in range(10):
        c.propose(b"r%d" % i, via=leader)
    c.settle()
    assert len(c.committed) == 11
    follower = next(i for i in c.ids if i != leader)
    c.crash(follower)
    c.restart(follower)
    assert c.nodes[follower].commit_index == c.logs[follower].load_commit() > 0
    c.crash(leader)
    c.tick(40)
    new = c.wait_leader()
    assert new != leader
    c.propose(b"later", via=new)
    c.restart(leader)
    converge(c)
    for i in c.ids:
        assert c.log_of(i)[:11] == c.committed[:11]
    # Whole-cluster restart: nothing committed is lost.
    for i in c.ids:
        c.crash(i)
    for i in c.ids:
        c.restart(i)
    assert all(c.logs[i].durable_entries()[:12] == c.committed[:12] for i in c.ids)
    c.wait_leader()
    c.propose(b"after-restart")
    converge(c)
    assert c.committed[-1].data == b"after-restart"
    c.check()


def test_unflushed_tail_is_lost_on_crash_but_never_acknowledged() -> None:
    c = Cluster(3, seed=12)
    leader = c.wait_leader()
    f1, f2 = (i for i in c.ids if i != leader)
    c.crash_mid.add(f1)  # f1 dies before its next fsync
    c.partition([f2])
    _, idx, _ = c.propose(b"x", via=leader)
    c.settle()
    assert f1 in c.down and not c.is_committed(idx, b"x")
    assert len(c.logs[f1].durable_entries()) < idx
    c.heal()
    c.restart(f1)
    converge(c)
    assert c.is_committed(idx, b"x")
    c.check()


def _figure8_logs() -> dict[int, MemoryLog]:
    # Raft paper, Figure 8 (b)->(c): S1 led term 2 and put index 2 on S2; S5 led term 3
    # (voted by S3, S4, S5) and wrote a different index 2; everyone has index 1.
    e1 = ents(1)
    return {
        1: MemoryLog([*e1, Entry(2, 2, b"S1-t2")], term=2, voted_for=1, commit=1),
        2: MemoryLog([*e1, Entry(2, 2, b"S1-t2")], term=2, voted_for=1, commit=1),
        3: MemoryLog(e1, term=3, voted_for=5, commit=1),
        4: MemoryLog(e1, term=3, voted_for=5, commit=1),
        5: MemoryLog([*e1, Entry(3, 2, b"S5-t3")], term=3, voted_for=5, commit=1),
    }


def _elect(c: Cluster, node: int, rounds: int = 10) -> None:
    for _ in range(rounds):
        c.nodes[node].campaign()
        c.process(node)
        c.settle()
        if c.nodes[node].is_leader:
            return
    raise AssertionError(f"node {node} was not elected")


@pytest.mark.parametrize("noop_reaches_majority", [False, True])
def test_figure8_commit_only_from_current_term(noop_reaches_majority: bool) -> None:
    c = Cluster(5, logs=_figure8_logs(), committed=ents(1), max_batch_bytes=1)
    c.crash(5)
    # (c) S1 is elected in term 4 and replicates its term-2 entry to a majority.
    if not noop_reaches_majority:

        def strip_noop(m: Message) -> Message | None:  # its term-4 no-op gets nowhere
            if isinstance(m, AppendRequest):
                return dataclasses.replace(m, entries=tuple(e for e in m.entries if e.index < 3))
            return m

        c.rewrite = strip_noop
    _elect(c, 1)
    assert c.nodes[1].term == 4
    c.tick(5)
    on_majority = [i for i in c.live() if c.log_of(i)[1:2] == [Entry(2, 2, b"S1-t2")]]
    assert len(on_majority) >= 3
    if not noop_reaches_majority:
        # (c) index 2 is on a majority, yet it is NOT committed: it is from term 2.
        assert c.nodes[1].commit_index == 1 and len(c.committed) == 1
        # (d) S1 crashes; S5 can win term 5 (its last term 3 beats term 2) and
        # overwrites index 2 everywhere: fine, because it was never committed.
        c.rewrite = None
        c.crash(1)
        c.restart(5)
        # S2, S3, S4 can only reach S5 (so none of them can win instead).
        c.cut = {(a, b) for a, b in itertools.permutations((2, 3, 4), 2)}
        c.tick(25)  # the followers' leader lease on S1 runs out
        _elect(c, 5)
        assert c.nodes[5].term == 5
        c.heal()
        converge(c)
        assert c.committed[1] == Entry(3, 2, b"S5-t3")
        assert all(c.log_of(i)[1] == Entry(3, 2, b"S5-t3") for i in c.live())
    else:
        # (e) the term-4 no-op reached a majority: it and index 2 are committed, and
        # S5 can no longer win: the entry survives every later leader.
        assert c.nodes[1].commit_index == 3
        assert c.committed[1] == Entry(2, 2, b"S1-t2")
        c.crash(1)
        c.restart(5)
        c.tick(25)
        for _ in range(5):
            c.nodes[5].campaign()
            c.process(5)
            c.settle()
            assert not c.nodes[5].is_leader
        leader = c.wait_leader()
        assert leader != 5
        converge(c)
        assert all(c.log_of(i)[1] == Entry(2, 2, b"S1-t2") for i in c.live())
    c.check()


# --------------------------------------------------------------------------- randomized

# op kinds, repeated for weight
_OPS = (
    ["tick"] * 14
    + ["tick_one", "deliver", "complete"] * 2
    + ["deliver", "complete"]
    + ["dup", "drop", "isolate", "partition", "crash", "crash_mid", "unreachable", "loss"]
    + ["isolate_leader", "crash_leader"]
    + ["heal", "restart"] * 3
    + ["propose"] * 6
)


def _run_ops(c: Cluster, ops: Sequence[tuple[str, int]]) -> None:
    loss = 0.0
    n = len(c.ids)
    for op, arg in ops:
        rnd = random.Random(arg)
        if op == "tick":  # 1-4 rounds: tick all, deliver (shuffled, lossy, some delayed)
            for _ in range(1 + arg % 4):
                for i in sorted(c.pending):  # async mode: some fsyncs finish
                    if rnd.random() < 0.7:
                        c.complete(i)
                for i in c.live():
                    c.nodes[i].tick()
                    c.process(i)
                pending = list(c.queue)
                c.queue.clear()
                rnd.shuffle(pending)
                for m in pending:
                    r = rnd.random()
                    if r < loss:
                        continue
                    if r < loss + 0.1:
                        c.queue.append(m)  # delayed to a later round
                    else:
                        c.deliver(m)
        elif op == "complete":
            if c.pending:
                c.complete(sorted(c.pending)[arg % len(c.pending)])
        elif op == "tick_one":
            i = c.ids[arg % n]
            if i not in c.down:
                c.nodes[i].tick()
                c.process(i)
        elif op == "deliver":
            for _ in range(1 + arg % 6):
                if not c.queue:
                    break
                k = rnd.randrange(len(c.queue))
                m = c.queue[k]
                del c.queue[k]
                c.deliver(m)
        elif op == "dup":
            if c.queue:
                c.queue.append(c.queue[arg % len(c.queue)])
        elif op == "drop":
            if c.queue:
                del c.queue[arg % len(c.queue)]
        elif op == "partition":
            side = [i for i in c.ids if arg >> i & 1]
            if 0 < len(side) < n:
                c.partition(side)
        elif op == "isolate":
            c.partition([c.ids[arg % n]])
        elif op in ("isolate_leader", "crash_leader"):
            leaders = [i for i in c.live() if c.nodes[i].is_leader]
            if leaders:
                target = leaders[arg % len(leaders)]
                if op == "crash_leader":
                    c.crash(target)
                else:
                    c.partition([target, c.ids[arg % n]])  # maybe with a buddy
        elif op == "heal":
            c.heal()
        elif op == "crash":
            i = c.ids[arg % n]
            if i not in c.down:
                c.crash(i)
        elif op == "crash_mid":
            i = c.ids[arg % n]
            if i not in c.down:
                c.crash_mid.add(i)
        elif op == "restart":
            if c.down:
                c.restart(sorted(c.down)[arg % len(c.down)])
        elif op == "propose":
            for i in c.live():
                if c.nodes[i].is_leader:
                    for k in range(1 + arg % 3):
                        c.propose(b"%d-%d-%d" % (i, arg, k), via=i)
        elif op == "unreachable":
            for i in c.live():
                c.nodes[i].report_unreachable(c.ids[arg % n])
        elif op == "loss":
            loss = (arg % 3) * 0.1
        c.check()


def _bucket(k: int) -> str:
    return "0" if k == 0 else "1-4" if k < 5 else "5-19" if k < 20 else ">=20"


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    n=st.sampled_from([3, 5]),
    async_persist=st.booleans(),
    seed=st.integers(0, 1 << 16),
    ops=st.lists(
        st.tuples(st.sampled_from(_OPS), st.integers(0, 1 << 16)), min_size=150, max_size=400
    ),
)
def test_randomized_safety_and_eventual_progress(
    n: int, async_persist: bool, seed: int, ops: list[tuple[str, int]]
) -> None:
    c = Cluster(
        n,
        seed=seed,
        async_persist=async_persist,
        election_ticks=5,
        max_batch_bytes=64,
        max_inflight_appends=3,
    )
    _run_ops(c, ops)
    c.check()
    c.complete_all()
    c.async_persist = False
    event(f"leaders elected during faults: {_bucket(len(c.leaders))}")
    event(f"entries committed during faults: {_bucket(len(c.committed))}")
    event(f"log truncations during faults: {_bucket(c.truncations)}")
    # Liveness once the faults stop: heal, restart everyone, and a write commits everywhere.
    c.heal()
    c.crash_mid.clear()
    for i in sorted(c.down):
        c.restart(i)
    c.settle()
    leader = c.wait_leader(max_rounds=200)
    _, idx, _ = c.propose(b"final", via=leader)
    converge(c, rounds=200)
    assert c.is_committed(idx, b"final")
    c.check()
    committed = c.committed
    for i in c.ids:
        assert c.log_of(i) == committed
        assert c.logs[i].durable_entries() == committed


def test_follower_that_lost_acknowledged_entries_is_caught_up_again() -> None:
    """A follower acked entries, then lost them (its disk cut a torn tail on restart):
    its refusals sit below the leader's match for it; the leader must probe lower."""
    leader, log, _ = make_leader()
    term = leader.term
    for i in range(3):
        leader.propose(f"r{i}".encode())
    pump(leader, log)
    last = leader.last_index
    leader.step(AppendResponse(group_id=G, term=term, src=2, dst=1, success=True, match_index=last))
    pump(leader, log)
    assert leader.peer_match(2) == last
    # The restarted follower now ends two entries earlier and refuses the next append.
    lost_from = last - 2
    leader.step(
        AppendResponse(
            group_id=G,
            term=term,
            src=2,
            dst=1,
            success=False,
            match_index=last,
            reject_hint=lost_from,
        )
    )
    resent = of(pump(leader, log), AppendRequest, dst=2)
    assert resent, "the leader must send again to the follower"
    assert resent[-1].prev_index == lost_from
    assert [e.index for e in resent[-1].entries][:2] == [lost_from + 1, lost_from + 2]
    assert leader.peer_match(2) == lost_from
