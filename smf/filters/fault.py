"""Fault injection: delay, fail with a status, drop, or close, on chosen methods.

Usable from tests and from the broker's fault tests; rules can be changed while the
filter is installed (``set``/``clear``), e.g. to cut and heal a link.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from ..errors import RpcError
from .base import Filter, FilterSide, Message

FaultKind = Literal["delay", "error", "drop", "close"]


@dataclass(frozen=True)
class Fault:
    """One rule. ``wire_ids=None`` matches every request (and, on the way back, every
    response); ``probability`` is per message; ``direction`` picks the chain."""

    kind: FaultKind
    probability: float = 1.0
    seconds: float = 0.0  # for "delay"
    status: int = 503  # for "error"
    message: str = "fault injected"
    wire_ids: frozenset[int] | None = None
    direction: Literal["incoming", "outgoing"] = "incoming"

    def __post_init__(self) -> None:
        if self.kind not in ("delay", "error", "drop", "close"):
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability {self.probability} is not within 0..1")


class FaultFilter(Filter):
    def __init__(self, faults: Iterable[Fault] = (), *, seed: int | None = None) -> None:
        self.faults: tuple[Fault, ...] = tuple(faults)
        self._rng = random.Random(seed)
        self.injected: dict[str, int] = {}

    def set(self, *faults: Fault) -> None:
        self.faults = faults

    def clear(self) -> None:
        self.faults = ()

    async def incoming(self, message: Message, side: FilterSide) -> Message | None:
        return await self._apply("incoming", message, side)

    async def outgoing(self, message: Message, side: FilterSide) -> Message | None:
        return await self._apply("outgoing", message, side)

    async def _apply(self, direction: str, message: Message, side: FilterSide) -> Message | None:
        for fault in self.faults:
            if fault.direction != direction:
                continue
            if fault.wire_ids is not None and message.meta not in fault.wire_ids:
                continue
            if fault.probability < 1.0 and self._rng.random() >= fault.probability:
                continue
            self.injected[fault.kind] = self.injected.get(fault.kind, 0) + 1
            if fault.kind == "delay":
                await asyncio.sleep(fault.seconds)
            elif fault.kind == "error":
                raise RpcError.from_status(fault.status, fault.message)
            elif fault.kind == "drop":
                return None
            else:
                side.close()
                return None
        return message
