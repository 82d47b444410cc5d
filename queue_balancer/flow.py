"""Min-cost flow by successive shortest paths, for the planner's small aggregated networks.

The planner groups queues that are interchangeable (same current leader, same possible targets), so
even 10,000 queues on 9 nodes give a network of a few hundred arcs; pushing the bottleneck capacity
along each shortest path keeps the number of augmentations small.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


def smallest_feasible(low: int, high: int, feasible: Callable[[int], bool]) -> int:
    """Smallest value in [low, high] for which a monotone predicate holds (it holds at high)."""
    while low < high:
        middle = (low + high) // 2
        if feasible(middle):
            high = middle
        else:
            low = middle + 1
    return high


def largest_feasible(low: int, high: int, feasible: Callable[[int], bool]) -> int:
    """Largest value in [low, high] for which a monotone predicate holds (it holds at low)."""
    while low < high:
        middle = (low + high + 1) // 2
        if feasible(middle):
            low = middle
        else:
            high = middle - 1
    return low


@dataclass
class MinCostFlow:
    """A directed network with integer capacities and (possibly negative) integer costs.

    Negative costs are fine as long as the network has no negative cycle to begin with, which holds
    for the planner's layered (acyclic) networks.
    """

    size: int
    _head: list[list[int]] = field(init=False)
    _to: list[int] = field(default_factory=list)
    _cap: list[int] = field(default_factory=list)
    _cost: list[int] = field(default_factory=list)
    _initial: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._head = [[] for _ in range(self.size)]

    def add_arc(self, tail: int, head: int, capacity: int, cost: int) -> int:
        """Add an arc; returns its id, to read its flow later."""
        arc = len(self._to)
        for node, to, cap, cost_ in ((tail, head, capacity, cost), (head, tail, 0, -cost)):
            self._head[node].append(len(self._to))
            self._to.append(to)
            self._cap.append(cap)
            self._cost.append(cost_)
            self._initial.append(cap)
        return arc

    def flow_on(self, arc: int) -> int:
        return self._initial[arc] - self._cap[arc]

    def solve(self, source: int, sink: int, limit: int) -> tuple[int, int]:
        """Send up to ``limit`` units from source to sink at least cost; returns (flow, cost)."""
        flow = cost = 0
        while flow < limit:
            path = self._shortest_path(source, sink)
            if path is None:
                break
            push = min([limit - flow, *(self._cap[a] for a in path)])
            for arc in path:
                self._cap[arc] -= push
                self._cap[arc ^ 1] += push
                cost += push * self._cost[arc]
            flow += push
        return flow, cost

    def _shortest_path(self, source: int, sink: int) -> list[int] | None:
        """Bellman-Ford with a queue (SPFA); ties broken by arc order, so results are deterministic."""
        inf = float("inf")
        distance: list[float] = [inf] * self.size
        via: list[int] = [-1] * self.size
        queued = [False] * self.size
        distance[source] = 0
        pending = deque([source])
        while pending:
            node = pending.popleft()
            queued[node] = False
            for arc in self._head[node]:
                if self._cap[arc] <= 0:
                    continue
                head = self._to[arc]
                candidate = distance[node] + self._cost[arc]
                if candidate < distance[head]:
                    distance[head] = candidate
                    via[head] = arc
                    if not queued[head]:
                        queued[head] = True
                        pending.append(head)
        if distance[sink] == inf:
            return None
        path: list[int] = []
        node = sink
        while node != source:
            arc = via[node]
            path.append(arc)
            node = self._to[arc ^ 1]
        path.reverse()
        return path
