"""Sans-IO Raft consensus core for one replication group (one partition).

No sockets, no asyncio, no clocks: the owner feeds inputs and drains outputs.

Inputs
    :meth:`RaftGroup.tick` (logical time), :meth:`RaftGroup.step` (one inbound message),
    :meth:`RaftGroup.propose` (leader only), :meth:`RaftGroup.campaign`,
    :meth:`RaftGroup.report_unreachable`.

Outputs
    :meth:`RaftGroup.ready` returns a :class:`Ready` describing everything that has to be
    persisted, sent and applied; :meth:`RaftGroup.advance` acknowledges that the Ready's
    writes are durable.

Ready / persist contract
========================

The core never writes to the :class:`LogStore`; it only *reads* the part of it that is
known to be durable and valid.  New entries (the leader's proposals and no-ops, the
follower's replicated entries) are kept in an in-memory "unstable" tail and handed to the
owner in ``Ready.entries_to_persist``, so one ``flush`` (fsync) covers a whole batch.
For each Ready, in this order::

    rd = group.ready()
    if rd is None: nothing to do
    1. if rd.hard_state_changed:      log.save_state(*rd.hard_state_changed)  (durable)
    2. if rd.truncate_from is not None: log.truncate_suffix(rd.truncate_from)
    3. if rd.entries_to_persist:      log.append(rd.entries_to_persist)
    4. if 2 or 3 happened (rd.needs_flush): log.flush()
    5. send rd.messages                (only now: they may vouch for steps 1-4)
    6. apply rd.committed in order     (ack producers / advance the high watermark);
       if rd.commit_index is not None: log.save_commit(rd.commit_index)  (advisory)
    7. group.advance(rd)               (any time after step 4; before or after 5/6)

``save_state`` must be durable when it returns (a Ready may change the hard state with
nothing to flush, e.g. a granted vote) and must precede sending the messages: a granted
vote or a candidate's own vote is only sent once persisted.  Writing the hard state
before the log means a crash never leaves entries from a term newer than the saved term.

Permitted optimization of step 5: ``AppendRequest`` and ``Heartbeat`` messages (only a
leader sends them) may be sent *before* steps 2-4 finish, so that the leader's fsync
overlaps the followers'.  This is safe because the leader counts itself toward the
commit quorum only for entries it has flushed, and its term and vote were persisted
before it could be elected.  Every other message (votes, append/heartbeat responses)
must wait for the persist.

While a Ready is outstanding (between ``ready()`` and ``advance()``) ``ready()`` returns
``None``; ``tick``/``step``/``propose`` may still be called (e.g. while the writes and
fsync run in an executor).  The core then only reads log indices the outstanding Ready
does not write (the LogStore must still tolerate the concurrent access: SegmentedLog
locks).  Everything those calls produce goes into the *next* Ready, i.e. after the next
persist.

Durability rules this gives (acks=all with fsync semantics):

* a follower's successful ``AppendResponse`` is sent only after the entries it
  acknowledges are flushed (it travels in the same Ready, after step 4);
* the leader counts *itself* toward the commit quorum only for entries it has flushed
  (its own match index is the durable prefix, advanced in :meth:`advance`), so an entry
  is committed only once durable on a majority;
* ``Ready.committed`` only ever contains entries that are durable on *this* node, and
  ``commit_index`` (what to pass to ``save_commit``) is the last of them.

Protocol features: pre-vote, check-quorum (with the leader-lease rule that a node that
heard from a live leader within an election timeout ignores vote requests), a no-op
entry (``kind=1``) appended by every new leader so that earlier-term entries commit
indirectly, pipelined appends (up to ``max_inflight_appends`` per follower) with probe
fallback and fast backtracking via ``reject_hint``, batches up to ``max_batch_bytes``.
Proposals made between two ``ready()`` calls go out as one append per follower.  A
pipelined append unanswered for ``append_resend_ticks`` (default ``max(2, 2 *
heartbeat_ticks)``) when a heartbeat response arrives is presumed lost and the follower
is probed again from its match index; ``report_unreachable`` does that at once.
Followers learn a new commit index from the next append or heartbeat (there is no
separate broadcast when the leader's commit index moves).

Not supported: membership changes, snapshots / catching up a follower whose needed
entries were removed from the leader's log by retention, leadership transfer,
read-index / lease reads, flow control on the total uncommitted size.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from .log import KIND_DATA, KIND_NOOP, Entry, record_size

__all__ = [
    "KIND_DATA",
    "KIND_NOOP",
    "AppendRequest",
    "AppendResponse",
    "Entry",
    "Heartbeat",
    "HeartbeatResponse",
    "LogStore",
    "MemoryLog",
    "Message",
    "NotLeader",
    "RaftGroup",
    "RaftMessage",
    "Ready",
    "Role",
    "SoftState",
    "VoteRequest",
    "VoteResponse",
]


# --------------------------------------------------------------------------- storage


class LogStore(Protocol):
    """What the Raft core needs from a replica's log (see ``log.SegmentedLog``)."""

    def first_index(self) -> int: ...  # 1 when empty
    def last_index(self) -> int: ...  # 0 when empty
    def last_term(self) -> int: ...
    def term_at(self, index: int) -> int: ...  # 0 for index 0; IndexError outside
    def entries(self, lo: int, hi: int, max_bytes: int = 1 << 20) -> list[Entry]: ...
    def append(self, entries: Sequence[Entry]) -> None: ...
    def truncate_suffix(self, index: int) -> None: ...
    def flush(self) -> None: ...
    def save_state(self, term: int, voted_for: int | None) -> None: ...
    def load_state(self) -> tuple[int, int | None]: ...
    def save_commit(self, commit_index: int) -> None: ...
    def load_commit(self) -> int: ...


class MemoryLog:
    """In-memory :class:`LogStore` with an explicit durability model (for tests).

    ``append``/``truncate_suffix`` change the visible log; only :meth:`flush` makes them
    durable.  ``save_state`` and ``save_commit`` are durable on return.  :meth:`crash`
    returns what a restart would find: the durable entries and state.
    """

    def __init__(
        self,
        entries: Sequence[Entry] = (),
        *,
        term: int = 0,
        voted_for: int | None = None,
        commit: int = 0,
    ) -> None:
        self._entries: list[Entry] = []
        self._durable: list[Entry] = []
        self._cut: int | None = None  # lowest truncation point since the last flush
        self._term = term
        self._voted_for = voted_for
        self._commit = commit
        self.flushes = 0
        if entries:
            self.append(entries)
            self.flush()

    def first_index(self) -> int:
        return 1

    def last_index(self) -> int:
        return len(self._entries)

    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else 0

    def term_at(self, index: int) -> int:
        if index == 0:
            return 0
        if not 1 <= index <= len(self._entries):
            raise IndexError(f"log index {index} outside [1..{len(self._entries)}]")
        return self._entries[index - 1].term

    def entries(self, lo: int, hi: int, max_bytes: int = 1 << 20) -> list[Entry]:
        if lo < 1:
            raise IndexError(f"log index {lo} is below first index 1")
        out: list[Entry] = []
        budget = max_bytes
        for e in self._entries[lo - 1 : max(lo - 1, hi - 1)]:
            size = record_size(e)
            if out and size > budget:
                break
            budget -= size
            out.append(e)
        return out

    def append(self, entries: Sequence[Entry]) -> None:
        for e in entries:
            if e.index != len(self._entries) + 1:
                raise ValueError(f"append of index {e.index} after {len(self._entries)}")
            if self._entries and e.term < self._entries[-1].term:
                raise ValueError(f"term goes backwards at index {e.index}")
            self._entries.append(e)

    def truncate_suffix(self, index: int) -> None:
        if index < 1:
            raise ValueError(f"cannot truncate at {index}")
        if index > len(self._entries):
            return
        del self._entries[index - 1 :]
        if self._cut is None or index < self._cut:
            self._cut = index

    def flush(self) -> None:
        self.flushes += 1
        if self._cut is not None:
            del self._durable[self._cut - 1 :]
            self._cut = None
        self._durable.extend(self._entries[len(self._durable) :])

    def save_state(self, term: int, voted_for: int | None) -> None:
        self._term, self._voted_for = term, voted_for

    def load_state(self) -> tuple[int, int | None]:
        return self._term, self._voted_for

    def save_commit(self, commit_index: int) -> None:
        self._commit = commit_index

    def load_commit(self) -> int:
        return min(self._commit, len(self._entries))

    # ---- test helpers

    def all_entries(self) -> list[Entry]:
        """The visible log (including unflushed writes)."""
        return list(self._entries)

    def durable_entries(self) -> list[Entry]:
        """What survives a crash right now."""
        return list(self._durable)

    def crash(self) -> MemoryLog:
        """A new log holding only what was durable (simulates a process crash)."""
        log = MemoryLog(term=self._term, voted_for=self._voted_for, commit=self._commit)
        log._entries = list(self._durable)
        log._durable = list(self._durable)
        return log


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True, kw_only=True)
class RaftMessage:
    """Fields every message carries."""

    group_id: int
    term: int
    src: int
    dst: int


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteRequest(RaftMessage):
    """RequestVote.  With ``pre_vote`` the term is the one the sender *would* use;
    neither side changes its term or vote because of a pre-vote."""

    last_log_index: int
    last_log_term: int
    pre_vote: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteResponse(RaftMessage):
    """A granted response carries the request's term; a rejection the voter's term."""

    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendRequest(RaftMessage):
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    leader_commit: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendResponse(RaftMessage):
    """``success``: the follower's log matches the leader's up to ``match_index``.

    On rejection ``match_index`` is the rejected request's ``prev_index`` (so the leader
    can discard stale rejections) and ``reject_hint`` is the highest index the leader
    should try next as ``prev_index``: at most the follower's last index, lowered past
    entries whose term is higher than the rejected ``prev_term``.
    """

    success: bool
    match_index: int
    reject_hint: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat(RaftMessage):
    """Liveness + commit propagation; ``leader_commit`` is already clamped by the
    leader to what this follower is known to match, so it is always safe to apply."""

    leader_commit: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatResponse(RaftMessage):
    """Also sent (with the receiver's higher term) in reply to a stale leader's append
    or heartbeat, so that a deposed leader learns the new term."""


Message: TypeAlias = (
    VoteRequest | VoteResponse | AppendRequest | AppendResponse | Heartbeat | HeartbeatResponse
)


class NotLeader(Exception):
    """Raised by :meth:`RaftGroup.propose` on a non-leader; ``leader_id`` is a hint."""

    def __init__(self, leader_id: int | None) -> None:
        super().__init__(f"not the leader (leader: {leader_id})")
        self.leader_id = leader_id


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state, reported in a Ready whenever it changes."""

    role: Role
    leader_id: int | None
    term: int


@dataclass(slots=True)
class Ready:
    """One batch of work for the owner; see the module docstring for the contract."""

    hard_state_changed: tuple[int, int | None] | None
    truncate_from: int | None
    entries_to_persist: list[Entry]
    messages: list[Message]
    committed: list[Entry]
    commit_index: int | None
    leader_changed: int | None  # new known leader (None: unchanged, or now unknown)
    soft_state: SoftState | None  # set whenever role/leader/term changed

    @property
    def needs_flush(self) -> bool:
        return self.truncate_from is not None or bool(self.entries_to_persist)


# --------------------------------------------------------------------------- core

_PROBE = 0
_REPLICATE = 1
_COMMITTED_BYTES_PER_READY = 8 << 20


class _Progress:
    """The leader's view of one follower."""

    __slots__ = ("inflight", "match", "next", "probe_sent", "recent_active", "state")

    def __init__(self, next_index: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = _PROBE
        self.probe_sent = False
        # (last index carried, tick sent) of each outstanding append in replicate mode
        self.inflight: deque[tuple[int, int]] = deque()
        self.recent_active = False

    def become_probe(self) -> None:
        self.state = _PROBE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.state = _REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflight.clear()


class RaftGroup:
    """The Raft state machine of one replica of one group."""

    def __init__(
        self,
        group_id: int,
        node_id: int,
        peers: Sequence[int],
        log: LogStore,
        *,
        election_ticks: int = 10,
        heartbeat_ticks: int = 1,
        rng: random.Random,
        max_inflight_appends: int = 8,
        max_batch_bytes: int = 1 << 20,
        pre_vote: bool = True,
        check_quorum: bool = True,
        append_resend_ticks: int | None = None,
    ) -> None:
        voters = tuple(sorted(set(peers)))
        if node_id not in voters:
            raise ValueError(f"node {node_id} is not among the voters {voters}")
        if heartbeat_ticks < 1 or election_ticks <= heartbeat_ticks:
            raise ValueError("need 1 <= heartbeat_ticks < election_ticks")
        if max_inflight_appends < 1 or max_batch_bytes < 1:
            raise ValueError("max_inflight_appends and max_batch_bytes must be positive")
        self.group_id = group_id
        self.node_id = node_id
        self.voters = voters
        self._others = tuple(p for p in voters if p != node_id)
        self._quorum = len(voters) // 2 + 1
        self._log = log
        self._election_ticks = election_ticks
        self._heartbeat_ticks = heartbeat_ticks
        self._rng = rng
        self._max_inflight = max_inflight_appends
        self._max_batch_bytes = max_batch_bytes
        self._pre_vote = pre_vote
        self._check_quorum = check_quorum
        # an outstanding append with no answer for this long is presumed lost
        self._resend_ticks = append_resend_ticks or max(2, 2 * heartbeat_ticks)

        term, voted_for = log.load_state()
        self._term = term
        self._voted_for = voted_for
        self._persisted_hs: tuple[int, int | None] = (term, voted_for)

        # Logical log = log store [.. _stable_last] + _unstable.  The store may hold
        # entries past _stable_last (up to _disk_last) that are no longer valid: the
        # next Ready truncates them.
        self._stable_last = log.last_index()
        self._disk_last = self._stable_last
        self._unstable: list[Entry] = []

        self._commit = max(min(log.load_commit(), self._stable_last), log.first_index() - 1)
        self._applied = self._commit  # last index handed out in Ready.committed

        self._role = Role.FOLLOWER
        self._leader: int | None = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = election_ticks
        self._now = 0  # ticks since start (for resend timing)
        self._votes: dict[int, bool] = {}
        self._progress: dict[int, _Progress] = {}
        self._msgs: list[Message] = []
        self._bcast_pending = False
        self._ready_outstanding = False
        self._reported_soft = SoftState(Role.FOLLOWER, None, term)
        self._reported_leader: int | None = None
        self._reset_timers()

    # ------------------------------------------------------------------ introspection

    @property
    def term(self) -> int:
        return self._term

    @property
    def voted_for(self) -> int | None:
        return self._voted_for

    @property
    def role(self) -> Role:
        return self._role

    @property
    def is_leader(self) -> bool:
        return self._role is Role.LEADER

    @property
    def leader_id(self) -> int | None:
        return self._leader

    @property
    def commit_index(self) -> int:
        """Highest index known committed (may exceed what is durable locally)."""
        return self._commit

    @property
    def applied_index(self) -> int:
        """Last index handed out in ``Ready.committed``."""
        return self._applied

    @property
    def last_index(self) -> int:
        """Last index of the logical log (durable + not yet persisted)."""
        return self._last_index()

    @property
    def durable_index(self) -> int:
        """Last index known durable and valid in the log store."""
        return self._stable_last

    def entries(self, lo: int, hi: int, max_bytes: int = 1 << 62) -> list[Entry]:
        """Entries ``[lo, hi)`` of the logical log (including unpersisted ones)."""
        return self._entries(lo, min(hi, self._last_index() + 1), max_bytes)

    def peer_match(self, peer: int) -> int | None:
        """Leader only: the highest index known replicated (durably) on ``peer``."""
        if peer == self.node_id:
            return self._stable_last if self._role is Role.LEADER else None
        pr = self._progress.get(peer)
        return pr.match if pr is not None else None

    # ------------------------------------------------------------------ log view

    def _last_index(self) -> int:
        return self._unstable[-1].index if self._unstable else self._stable_last

    def _last_term(self) -> int:
        if self._unstable:
            return self._unstable[-1].term
        return self._log.term_at(self._stable_last)

    def _term_at(self, index: int) -> int:
        if index > self._stable_last:
            off = index - self._stable_last - 1
            if off < len(self._unstable):
                return self._unstable[off].term
            raise IndexError(f"log index {index} past {self._last_index()}")
        return self._log.term_at(index)

    def _entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Logical entries [lo, hi): at least one if any, then up to ``max_bytes``."""
        out: list[Entry] = []
        if lo >= hi:
            return out
        budget = max_bytes
        if lo <= self._stable_last:
            stop = min(hi, self._stable_last + 1)
            out = self._log.entries(lo, stop, max_bytes)
            if not out or out[-1].index < stop - 1:
                return out  # byte budget reached inside the durable part
            budget -= sum(record_size(e) for e in out)
            lo = stop
        start = lo - self._stable_last - 1
        for e in self._unstable[start : hi - self._stable_last - 1]:
            size = record_size(e)
            if out and size > budget:
                break
            budget -= size
            out.append(e)
        return out

    def _truncate(self, index: int) -> None:
        """Drop logical entries >= index (never committed ones)."""
        if index <= self._commit:
            raise AssertionError(
                f"raft: refusing to truncate committed entries (at {index}, "
                f"commit {self._commit}, group {self.group_id}, node {self.node_id})"
            )
        if index <= self._stable_last:
            self._stable_last = index - 1
            self._unstable.clear()
        else:
            del self._unstable[index - self._stable_last - 1 :]

    def _up_to_date(self, last_index: int, last_term: int) -> bool:
        my_term = self._last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self._last_index())

    # ------------------------------------------------------------------ state changes

    def _reset_timers(self) -> None:
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = self._election_ticks + self._rng.randrange(self._election_ticks)

    def _become_follower(self, term: int, leader: int | None) -> None:
        if term > self._term:
            self._term = term
            self._voted_for = None
        self._role = Role.FOLLOWER
        self._leader = leader
        self._votes = {}
        self._progress = {}
        self._bcast_pending = False
        self._reset_timers()

    def _become_pre_candidate(self) -> None:
        self._role = Role.PRE_CANDIDATE
        self._leader = None
        self._votes = {self.node_id: True}
        self._reset_timers()
        if not self._tally():
            req_term = self._term + 1
            self._send_votes(req_term, pre_vote=True)

    def _become_candidate(self) -> None:
        self._term += 1
        self._voted_for = self.node_id
        self._role = Role.CANDIDATE
        self._leader = None
        self._votes = {self.node_id: True}
        self._reset_timers()
        if not self._tally():
            self._send_votes(self._term, pre_vote=False)

    def _send_votes(self, term: int, *, pre_vote: bool) -> None:
        last_index, last_term = self._last_index(), self._last_term()
        for peer in self._others:
            self._msgs.append(
                VoteRequest(
                    group_id=self.group_id,
                    term=term,
                    src=self.node_id,
                    dst=peer,
                    last_log_index=last_index,
                    last_log_term=last_term,
                    pre_vote=pre_vote,
                )
            )

    def _tally(self) -> bool:
        """Act on the votes so far; True if the election is decided."""
        granted = sum(self._votes.values())
        rejected = len(self._votes) - granted
        if granted >= self._quorum:
            if self._role is Role.PRE_CANDIDATE:
                self._become_candidate()
            else:
                self._become_leader()
            return True
        if rejected > len(self.voters) - self._quorum:
            self._become_follower(self._term, None)
            return True
        return False

    def _become_leader(self) -> None:
        self._role = Role.LEADER
        self._leader = self.node_id
        self._votes = {}
        self._reset_timers()
        nxt = self._last_index() + 1
        self._progress = {p: _Progress(nxt) for p in self._others}
        # The no-op: entries of earlier terms commit once it does (Raft 5.4.2).
        self._unstable.append(Entry(term=self._term, index=nxt, data=b"", kind=KIND_NOOP))
        self._bcast_append()

    def _hup(self) -> None:
        if self._role is Role.LEADER:
            return
        if self._pre_vote:
            self._become_pre_candidate()
        else:
            self._become_candidate()

    # ------------------------------------------------------------------ inputs

    def tick(self) -> None:
        """Advance logical time by one tick."""
        self._now += 1
        if self._role is Role.LEADER:
            self._tick_leader()
            return
        self._election_elapsed += 1
        if self._election_elapsed >= self._randomized_timeout:
            self._hup()

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self._election_ticks:
            self._election_elapsed = 0
            if self._check_quorum:
                active = 1 + sum(pr.recent_active for pr in self._progress.values())
                for pr in self._progress.values():
                    pr.recent_active = False
                if active < self._quorum:
                    # Cut off from the majority: stop accepting writes.
                    self._become_follower(self._term, None)
                    return
        if self._heartbeat_elapsed >= self._heartbeat_ticks:
            self._heartbeat_elapsed = 0
            for peer, pr in self._progress.items():
                self._msgs.append(
                    Heartbeat(
                        group_id=self.group_id,
                        term=self._term,
                        src=self.node_id,
                        dst=peer,
                        leader_commit=min(self._commit, pr.match),
                    )
                )

    def campaign(self) -> None:
        """Start an election now (through pre-vote when enabled), as if timed out."""
        self._hup()

    def propose(self, data: bytes) -> int:
        """Append a data record (leader only); returns its index.

        The entry is committed once ``Ready.committed`` carries an entry with this index
        *and this leader's term*; if a different entry commits at that index the proposal
        was lost (leadership changed) and may be retried.
        """
        if self._role is not Role.LEADER:
            raise NotLeader(self._leader)
        index = self._last_index() + 1
        self._unstable.append(Entry(term=self._term, index=index, data=data, kind=KIND_DATA))
        self._bcast_pending = True  # sent at ready(): one batch for many proposals
        return index

    def report_unreachable(self, peer: int) -> None:
        """The transport failed to deliver to ``peer``: stop pipelining to it."""
        pr = self._progress.get(peer)
        if self._role is Role.LEADER and pr is not None and pr.state == _REPLICATE:
            pr.become_probe()

    def step(self, msg: Message) -> None:
        """Handle one inbound message."""
        if msg.group_id != self.group_id or msg.dst != self.node_id:
            raise ValueError(f"message for group {msg.group_id} node {msg.dst}: {msg!r}")
        if msg.src == self.node_id or msg.src not in self.voters:
            return
        if msg.term > self._term:
            if isinstance(msg, VoteRequest):
                if (
                    self._check_quorum
                    and self._leader is not None
                    and self._election_elapsed < self._election_ticks
                ):
                    return  # leader lease: we heard from a live leader recently
                if not msg.pre_vote:
                    self._become_follower(msg.term, None)
            elif isinstance(msg, VoteResponse) and msg.pre_vote and msg.granted:
                pass  # granted pre-votes carry the term we are about to campaign in
            else:
                leader = msg.src if isinstance(msg, AppendRequest | Heartbeat) else None
                self._become_follower(msg.term, leader)
        elif msg.term < self._term:
            if isinstance(msg, AppendRequest | Heartbeat):
                if self._check_quorum or self._pre_vote:
                    # A deposed leader: tell it the current term (it may be unable to
                    # learn it otherwise since we ignore its votes while in lease).
                    self._msgs.append(
                        HeartbeatResponse(
                            group_id=self.group_id, term=self._term, src=self.node_id, dst=msg.src
                        )
                    )
            elif isinstance(msg, VoteRequest) and msg.pre_vote:
                self._reply_vote(msg, granted=False)
            return

        if isinstance(msg, VoteRequest):
            self._on_vote_request(msg)
        elif isinstance(msg, VoteResponse):
            self._on_vote_response(msg)
        elif isinstance(msg, AppendRequest):
            if self._accept_leader(msg.src):
                self._on_append(msg)
        elif isinstance(msg, Heartbeat):
            if self._accept_leader(msg.src):
                self._on_heartbeat(msg)
        elif isinstance(msg, AppendResponse):
            if self._role is Role.LEADER:
                self._on_append_response(msg)
        elif self._role is Role.LEADER:
            self._on_heartbeat_response(msg)

    # ------------------------------------------------------------------ elections

    def _reply_vote(self, msg: VoteRequest, *, granted: bool) -> None:
        self._msgs.append(
            VoteResponse(
                group_id=self.group_id,
                term=msg.term if granted else self._term,
                src=self.node_id,
                dst=msg.src,
                granted=granted,
                pre_vote=msg.pre_vote,
            )
        )

    def _on_vote_request(self, msg: VoteRequest) -> None:
        can_vote = (
            self._voted_for == msg.src
            or (self._voted_for is None and self._leader is None)
            or (msg.pre_vote and msg.term > self._term)
        )
        if can_vote and self._up_to_date(msg.last_log_index, msg.last_log_term):
            if not msg.pre_vote:
                self._voted_for = msg.src  # persisted (Ready) before the reply is sent
                self._election_elapsed = 0
            self._reply_vote(msg, granted=True)
        else:
            self._reply_vote(msg, granted=False)

    def _on_vote_response(self, msg: VoteResponse) -> None:
        if self._role is Role.PRE_CANDIDATE and msg.pre_vote:
            expected = self._term + 1 if msg.granted else self._term
        elif self._role is Role.CANDIDATE and not msg.pre_vote:
            expected = self._term
        else:
            return
        if msg.term != expected:
            return
        self._votes[msg.src] = msg.granted
        self._tally()

    # ------------------------------------------------------------------ follower side

    def _accept_leader(self, src: int) -> bool:
        """An append/heartbeat of our term arrived from ``src``."""
        if self._role is Role.LEADER:
            raise AssertionError(
                f"raft: two leaders in term {self._term} ({self.node_id} and {src})"
            )
        if self._role is not Role.FOLLOWER:
            self._become_follower(self._term, src)
        self._leader = src
        self._election_elapsed = 0
        return True

    def _respond_append(self, dst: int, *, success: bool, match: int, hint: int = 0) -> None:
        self._msgs.append(
            AppendResponse(
                group_id=self.group_id,
                term=self._term,
                src=self.node_id,
                dst=dst,
                success=success,
                match_index=match,
                reject_hint=hint,
            )
        )

    def _on_append(self, msg: AppendRequest) -> None:
        prev, ents = msg.prev_index, msg.entries
        last = self._last_index()
        if prev > last:
            self._respond_append(msg.src, success=False, match=prev, hint=last)
            return
        # Up to the commit index our log is the leader's, so prev_term is only checked
        # above it (below the log's first index it could not even be read).
        if prev > self._commit and self._term_at(prev) != msg.prev_term:
            hint = self._conflict_hint(prev, msg.prev_term)
            self._respond_append(msg.src, success=False, match=prev, hint=hint)
            return
        first = self._log.first_index()
        for i, e in enumerate(ents):
            if e.index > last:
                self._unstable.extend(ents[i:])
                break
            if e.index < first:
                continue  # removed by retention, hence committed
            if self._term_at(e.index) != e.term:
                # Conflict: drop it and everything after.  _truncate refuses (raises)
                # if that would remove a committed entry: a safety violation.
                self._truncate(e.index)
                self._unstable.extend(ents[i:])
                break
        last_new = prev + len(ents)
        if msg.leader_commit > self._commit:
            self._commit = max(self._commit, min(msg.leader_commit, last_new))
        self._respond_append(msg.src, success=True, match=last_new)

    def _conflict_hint(self, index: int, term: int) -> int:
        """Largest i <= index with term_at(i) <= term (terms never decrease in a log).

        Everything above it has a higher term than the leader's entry at ``index`` and
        so cannot match the leader.  Entries up to the commit index always match.
        """
        lo, hi = self._commit, min(index, self._last_index())
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._term_at(mid) <= term:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _on_heartbeat(self, msg: Heartbeat) -> None:
        commit = min(msg.leader_commit, self._last_index())
        if commit > self._commit:
            self._commit = commit
        self._msgs.append(
            HeartbeatResponse(
                group_id=self.group_id, term=self._term, src=self.node_id, dst=msg.src
            )
        )

    # ------------------------------------------------------------------ leader side

    def _send_append(self, peer: int, pr: _Progress) -> bool:
        """Send the next append to ``peer`` if its flow control allows; True if sent."""
        if pr.state == _PROBE:
            if pr.probe_sent:
                return False
        elif len(pr.inflight) >= self._max_inflight:
            return False
        last = self._last_index()
        if pr.state == _REPLICATE and pr.next > last:
            return False
        prev = pr.next - 1
        try:
            prev_term = self._term_at(prev)
            ents = self._entries(pr.next, last + 1, self._max_batch_bytes)
        except IndexError:
            return False  # needed entries were removed from our log (no snapshots)
        self._msgs.append(
            AppendRequest(
                group_id=self.group_id,
                term=self._term,
                src=self.node_id,
                dst=peer,
                prev_index=prev,
                prev_term=prev_term,
                entries=tuple(ents),
                leader_commit=self._commit,
            )
        )
        if pr.state == _REPLICATE:
            pr.next = ents[-1].index + 1
            pr.inflight.append((ents[-1].index, self._now))
        else:
            pr.probe_sent = True
        return True

    def _send_all(self, peer: int, pr: _Progress) -> None:
        while self._send_append(peer, pr) and pr.state == _REPLICATE:
            pass

    def _bcast_append(self) -> None:
        for peer, pr in self._progress.items():
            self._send_all(peer, pr)

    def _maybe_commit(self) -> bool:
        # The leader's own match is its *durable* prefix: acks=all with fsync.
        matches = sorted([self._stable_last, *(pr.match for pr in self._progress.values())])
        n = matches[len(matches) - self._quorum]
        if n > self._commit and self._term_at(n) == self._term:
            self._commit = n
            return True
        return False

    def _on_append_response(self, msg: AppendResponse) -> None:
        pr = self._progress[msg.src]
        pr.recent_active = True
        if msg.success:
            if msg.match_index < pr.match:
                return  # stale
            pr.match = msg.match_index
            if pr.state == _PROBE:
                pr.become_replicate()
            else:
                while pr.inflight and pr.inflight[0][0] <= pr.match:
                    pr.inflight.popleft()
                pr.next = max(pr.next, pr.match + 1)
            self._maybe_commit()
            self._send_all(msg.src, pr)
            return
        rejected = msg.match_index
        if msg.reject_hint < pr.match <= rejected:
            # A current append was refused by a follower whose log now ends before
            # entries it acknowledged (a torn tail cut on restart, say). Forget them
            # and probe from what it has; were the message stale instead, lowering
            # match costs resends only (it never lowers the commit index).
            pr.match = msg.reject_hint
            pr.become_probe()
            self._send_append(msg.src, pr)
            return
        if pr.state == _REPLICATE:
            if rejected <= pr.match:
                return  # stale
            pr.state = _PROBE
            pr.inflight.clear()
        elif rejected != pr.next - 1:
            return  # stale
        pr.next = max(pr.match + 1, min(rejected, msg.reject_hint + 1))
        pr.probe_sent = False
        self._send_append(msg.src, pr)

    def _on_heartbeat_response(self, msg: HeartbeatResponse) -> None:
        pr = self._progress[msg.src]
        pr.recent_active = True
        if pr.state == _PROBE:
            pr.probe_sent = False  # the probe may have been lost; allow another
        elif pr.inflight and self._now - pr.inflight[0][1] >= self._resend_ticks:
            pr.become_probe()  # pipelined appends presumed lost: resume from match
        if pr.match < self._last_index():
            self._send_all(msg.src, pr)

    # ------------------------------------------------------------------ Ready

    def _soft_state(self) -> SoftState:
        return SoftState(self._role, self._leader, self._term)

    def has_ready(self) -> bool:
        if self._ready_outstanding:
            return False
        return bool(
            self._msgs
            or self._bcast_pending
            or self._unstable
            or self._disk_last > self._stable_last
            or (self._term, self._voted_for) != self._persisted_hs
            or min(self._commit, self._stable_last) > self._applied
            or self._soft_state() != self._reported_soft
        )

    def ready(self) -> Ready | None:
        """The next batch of work, or None (nothing to do, or a Ready is outstanding)."""
        if self._ready_outstanding:
            return None
        if self._bcast_pending:
            self._bcast_pending = False
            if self._role is Role.LEADER:
                self._bcast_append()
        if not self.has_ready():
            return None
        hs = (self._term, self._voted_for)
        committed: list[Entry] = []
        hi = min(self._commit, self._stable_last)
        if hi > self._applied:
            committed = self._entries(self._applied + 1, hi + 1, _COMMITTED_BYTES_PER_READY)
            self._applied = committed[-1].index
        soft = self._soft_state()
        leader_changed = None
        if soft.leader_id != self._reported_leader:
            self._reported_leader = soft.leader_id
            leader_changed = soft.leader_id
        rd = Ready(
            hard_state_changed=hs if hs != self._persisted_hs else None,
            truncate_from=self._stable_last + 1 if self._disk_last > self._stable_last else None,
            entries_to_persist=list(self._unstable),
            messages=self._msgs,
            committed=committed,
            commit_index=committed[-1].index if committed else None,
            leader_changed=leader_changed,
            soft_state=soft if soft != self._reported_soft else None,
        )
        self._reported_soft = soft
        self._msgs = []
        self._ready_outstanding = True
        return rd

    def advance(self, rd: Ready) -> None:
        """The owner has durably applied ``rd``'s hard state, truncation and entries."""
        if not self._ready_outstanding:
            raise RuntimeError("advance() without an outstanding ready()")
        self._ready_outstanding = False
        if rd.hard_state_changed is not None:
            self._persisted_hs = rd.hard_state_changed
        if rd.truncate_from is not None:
            self._disk_last = rd.truncate_from - 1
        ents = rd.entries_to_persist
        if ents:
            self._disk_last = ents[-1].index
            # Entries that are still part of the logical log are now durable.  (A step()
            # while the Ready was outstanding may have truncated some of them; those are
            # on disk past _stable_last and the next Ready truncates them.)
            if ents[0].index == self._stable_last + 1:
                k = 0
                unstable = self._unstable
                while (
                    k < len(ents)
                    and k < len(unstable)
                    and unstable[k].index == ents[k].index
                    and unstable[k].term == ents[k].term
                ):
                    k += 1
                if k:
                    self._stable_last += k
                    del unstable[:k]
        if self._role is Role.LEADER:
            self._maybe_commit()
