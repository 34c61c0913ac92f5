"""The workers that run each request together: one for a plain probe, one per rank when distributed.

A request is done when every rank has answered. The first rank to fail stops the others at once
(they would wait forever in a collective on it), and its failure is the request's outcome on every
rank. A distributed trial is reported as the job will see it: the worst rank's peak memory, the
slowest rank's step, and samples per second across all ranks.
"""

from __future__ import annotations

import math
import selectors
import time
from typing import Any, Callable

from .distributed import POLL_S, PREFIX, Agreement, Topology
from .forks import Launcher
from .worker import SetupFailed, Worker

# How long a worker may take to start (Python, torch, the model, a CUDA context, the ranks meeting):
# a trial's own timeout does not include it, so a short one still leaves a loaded machine room.
START_S = 600.0
# A rank stopped because another rank failed first.
STOPPED = "stopped"
STOPPED_ERROR = "stopped: another rank failed first"
# A collective that failed because a peer went away: a consequence, never the cause.
_PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "NCCL communicator",
              "ProcessGroupNCCL", "ProcessGroupGloo", "Gloo", "gloo")


class Group:
    """`standby`: start the workers now but let them wait, having built the model, until `activate`
    (a single-process probe keeps one ready for when a brand-new process is needed). `fits_only`:
    the workers will run fit checks only, timing nothing. `on_progress` hears rank 0's progress
    events during a request. `learned`: what an earlier worker learned of the data and the model
    (`Session.learned`); `smallest`: whether, not told, set-up learns the smallest batch that trains
    (`Session.smallest`)."""

    def __init__(self, config: dict[str, Any], topo: Topology | None,
                 agreement: Agreement | None, generation: int, standby: bool = False,
                 on_progress: Callable[[dict[str, Any]], None] | None = None, learned: dict[str, Any] | None = None,
                 fits_only: bool = False, smallest: bool = True, launcher: Launcher | None = None):
        self.topo, self.agreement, self.on_progress = topo, agreement, on_progress
        self.workers: dict[int, Worker] = {}
        self.ready: dict[str, Any] = {}
        self.trials_run = 0
        self.standby_failure: dict[str, Any] | None = None
        self.waited = not standby  # a standby's workers have said they stand by
        try:
            for rank, local_rank in zip(topo.ranks, topo.local_ranks) if topo else [(0, 0)]:
                self.workers[rank] = Worker({"config": config, "standby": standby, "learned": learned,
                                             "smallest": smallest, "fits_only": fits_only,
                                             "rank": _rank_setup(topo, rank, local_rank, generation)}, fits_only, launcher)
        except BaseException:
            self.close()
            raise
        if not standby:
            self._activate()

    def standing_by(self) -> bool:
        """Wait until a standby's workers have done what they do before `activate` (on a CPU, all
        of their set-up); False if one failed there."""
        if not self.waited:
            self.waited = True
            self.standby_failure = _first_failure(self._gather(START_S))
        return self.standby_failure is None

    def activate(self, learned: dict[str, Any] | None = None) -> None:
        """A standby's workers go on to set up on the device, told what an earlier worker `learned`
        of the data and the model where they were started without it."""
        if not self.standing_by():
            self.close()
            raise SetupFailed(self.standby_failure["status"], _name(self.standby_failure, self.topo))
        for worker in self.workers.values():
            worker.send({"op": "start", "learned": learned})
        self._activate()

    def _activate(self) -> None:
        try:
            replies = self._gather(START_S)
        except BaseException:  # Ctrl-C during a slow model build: leave no child behind
            self.close()
            raise
        failed = _first_failure(replies)
        if failed is not None:
            self.close()
            raise SetupFailed(failed["status"], _name(failed, self.topo))
        self.ready = {**replies[0], "memory_total_bytes": _least(replies, "memory_total_bytes"),
                      "memory_limit_bytes": _least(replies, "memory_limit_bytes"),
                      "memory_ceiling_bytes": _least(replies, "memory_ceiling_bytes")}

    def run(self, batch_size: int, purpose: str, timeout_s: float, bar: float | None = None) -> dict[str, Any]:
        """One trial on every rank at `batch_size` per device: a throughput trial (stopped as a fit
        check if it cannot beat `bar` samples/s; single-process only) or a fit check."""
        fresh = self.trials_run == 0
        self.trials_run += 1
        start = time.perf_counter()
        request = {"op": "trial", "batch_size": batch_size, "purpose": purpose}
        if bar is not None:
            request["bar"] = bar
        replies = self._call_all(request, timeout_s)
        merged = merge_trial(replies, batch_size, self.ready["dataset_len"])
        merged["wall_s"] = time.perf_counter() - start
        merged["fresh_process"] = fresh
        return merged

    def call(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Any other request: rank 0's answer, or the failure that caused the others."""
        replies = self._call_all(request, timeout_s)
        failed = _first_failure(replies)
        reply = {**failed, "error": _name(failed, self.topo)} if failed else replies[0]
        return {k: v for k, v in reply.items() if k not in ("event", "rank")}

    def _call_all(self, request: dict[str, Any], timeout_s: float) -> list[dict[str, Any]]:
        for worker in self.workers.values():
            worker.send(request)
        return self._gather(timeout_s)

    def private_bytes(self) -> int | None:
        """The memory every rank's worker holds of its own now (`Worker.private_bytes`), together."""
        held = [worker.private_bytes() for worker in self.workers.values()]
        return None if None in held else sum(held)

    def close(self) -> None:
        for worker in self.workers.values():
            worker.close()
        self.workers = {}

    def _gather(self, timeout_s: float) -> list[dict[str, Any]]:
        """Every rank's next reply (all ranks', through the agreement, when others drive some)."""
        if self.agreement:
            self.agreement.next_round()
        mine = self._wait_local(timeout_s)
        for rank, reply in mine.items():
            reply["rank"] = rank
        return self.agreement.exchange(mine) if self.agreement else [mine[rank] for rank in sorted(mine)]

    def _wait_local(self, timeout_s: float) -> dict[int, dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        replies: dict[int, dict[str, Any]] = {}
        waiting = dict(self.workers)
        with selectors.DefaultSelector() as selector:
            for rank, worker in waiting.items():
                selector.register(worker, selectors.EVENT_READ, rank)

            def answered(rank: int, messages: list[dict[str, Any]]) -> None:
                for message in messages:
                    if message.get("event") == "progress":
                        if self.on_progress and rank == min(self.workers):
                            self.on_progress(message)
                    elif rank in waiting:
                        replies[rank] = message
                        selector.unregister(waiting.pop(rank))

            def stop_waiting(status: str, error: str) -> None:
                for rank, worker in waiting.items():
                    replies[rank] = worker.stop(status, error)
                waiting.clear()

            while waiting:
                if any(r.get("status") != "ok" for r in replies.values()) or (
                    self.agreement and self.agreement.flag_raised()
                ):
                    # A rank failed: the others wait on it in a collective that will never complete.
                    stop_waiting(STOPPED, STOPPED_ERROR)
                elif (left := deadline - time.monotonic()) <= 0:
                    stop_waiting("timeout", f"no result within {timeout_s:g} s; worker stopped")
                else:
                    for key, _ in selector.select(min(left, POLL_S)):
                        answered(key.data, key.fileobj.read())
        if self.agreement and any(r.get("status") != "ok" for r in replies.values()):
            self.agreement.raise_flag()  # ranks driven elsewhere may be waiting on these
        return replies


def _rank_setup(topo: Topology | None, rank: int, local_rank: int, generation: int) -> dict[str, Any] | None:
    if topo is None:
        return None
    return {
        "rank": rank, "local_rank": local_rank, "world_size": topo.world_size,
        "local_world_size": topo.local_world_size, "addr": topo.addr, "port": topo.port,
        # Each set of workers forms its own process group: stopped workers leave theirs behind.
        "prefix": f"{PREFIX}/workers{generation}",
    }


def _first_failure(replies: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The failure that caused the others. A rank whose peer died sees its collective fail too
    (gloo: connection reset), often first; a stopped rank only waited. So: running out of memory
    or being killed first, then an error of the rank's own, a timeout, a lost peer, a stop."""
    failed = [r for r in replies if r.get("status") != "ok"]
    return min(failed, key=_blame, default=None)


def _as_seen(reply: dict[str, Any], cause: dict[str, Any] | None) -> dict[str, Any]:
    """A rank's status and error. One whose collective failed because another rank failed first
    (its peer gone) only waited on it, as a rank stopped while waiting did: which of the two it is
    turns on how soon the parent stops it (on a loaded machine the collective often fails first)."""
    if cause is not None and reply is not cause and _blame(reply)[0] == _LOST and _blame(cause)[0] < _LOST:
        return {"status": STOPPED, "error": STOPPED_ERROR}
    return {"status": reply["status"], "error": reply.get("error")}


# `_blame`'s place for a rank whose failure is a lost peer.
_LOST = 3


def _blame(reply: dict[str, Any]) -> tuple[int, int]:
    status, error = reply.get("status"), reply.get("error") or ""
    if status in ("oom", "killed"):
        order = 0
    elif status == STOPPED:
        order = 4
    elif status == "timeout":
        order = 2
    elif any(fragment in error for fragment in _PEER_LOST):
        order = _LOST
    else:  # an error of its own, bad input at setup
        order = 1
    return order, reply.get("rank", 0)


def _name(reply: dict[str, Any], topo: Topology | None) -> str:
    error = reply.get("error") or ""
    if topo is None or topo.world_size == 1:
        return error
    return f"{_who(reply)}: {error}"


def _who(reply: dict[str, Any]) -> str:
    # Ranks that wait on each other time out together: which one hung first is not known.
    return "every rank" if reply.get("status") == "timeout" else f"rank {reply.get('rank')}"


def _most(replies: list[dict[str, Any]], key: str) -> int | None:
    return max((r[key] for r in replies if r.get(key) is not None), default=None)


def _least(replies: list[dict[str, Any]], key: str) -> int | None:
    return min((r[key] for r in replies if r.get(key) is not None), default=None)


def merge_trial(replies: list[dict[str, Any]], batch_size: int, dataset_len: int) -> dict[str, Any]:
    """One trial from every rank's reply, as the job sees it.

    A single rank's reply passes through. Across ranks: the first failure decides the status; the
    peak is the worst rank's (every rank must fit); the step is the slowest rank's median (the
    others wait for it in the gradient all-reduce); samples/s count every rank's batch.
    """
    for reply in replies:
        reply.setdefault("batch_size", batch_size)
    if len(replies) == 1:
        return replies[0]
    world = len(replies)
    failed = _first_failure(replies)
    merged: dict[str, Any] = {
        "batch_size": batch_size,
        "status": failed["status"] if failed else "ok",
        "error": f"{_who(failed)}: {failed.get('error')}" if failed else None,
        "failed_alloc_bytes": failed.get("failed_alloc_bytes") if failed else None,
        "peak_bytes": _most(replies, "peak_bytes"),
        "peak_allocated_bytes": _most(replies, "peak_allocated_bytes"),
        "capped_peak_bytes": _most(replies, "capped_peak_bytes"),
        "purpose": replies[0].get("purpose"),
        "steps": replies[0].get("steps"),
        "ranks": [
            {"rank": r["rank"], **_as_seen(r, failed), "peak_bytes": r.get("peak_bytes"),
             "step_ms": (r.get("step_ms") or {}).get("median")}
            for r in replies
        ],
    }
    if failed:
        return merged
    slowest = max(replies, key=lambda r: r["step_ms"]["median"])
    median_s = slowest["step_ms"]["median"] / 1000
    energy = [r.get("joules_per_sample") for r in replies]
    merged.update(
        step_ms=slowest["step_ms"],
        samples_per_s=batch_size * world / median_s if median_s > 0 else None,
        epoch_s=math.ceil(dataset_len / (batch_size * world)) * median_s,
        loss=replies[0].get("loss"),
        loss_finite=all(r.get("loss_finite") for r in replies),
        joules_per_sample=sum(energy) / world if None not in energy else None,
    )
    return merged
