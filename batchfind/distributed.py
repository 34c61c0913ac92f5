"""Where the ranks of a distributed probe come from, and how the processes that drive them agree.

Two ways in. `--nproc-per-node N` (or `probe.nproc_per_node`): this process drives all N ranks on
this machine and hosts the rendezvous store. Under `torchrun ... -m batchfind probe`: torchrun
started one batchfind per rank, on one or more nodes; each drives its own rank's worker and they
agree through torchrun's store.

Agreement happens here, between the driving processes, not inside the workers: a worker whose
peer ran out of memory in backward is stuck in DDP's gradient all-reduce and can reach no
collective, so its driver stops it instead. Every driver then publishes its ranks' results, all
read all of them, and all take the same next step.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .errors import BatchfindError, InputError

# torchrun sets these for every process it starts. Set together, they mean "join": that is how
# `torchrun -m batchfind` works, and nothing tells a rank torchrun started from a process that
# merely inherited them (run from inside a torchrun job). Such a process finds no peers, so the
# ranks must meet within MEET_S or the probe stops with one line naming the variables.
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# torchrun starts every rank of a job at once, after its own rendezvous: a minute is ample.
MEET_S = 60.0
# Keys of a probe live under this prefix in a store torchrun's agent may share.
PREFIX = "batchfind"
# How often a waiting driver looks at the store.
POLL_S = 0.1


@dataclass
class Topology:
    world_size: int
    ranks: list[int]  # global ranks this process drives
    local_ranks: list[int]  # their device indices on this node
    local_world_size: int  # ranks on this node: they share its RAM and cores
    nodes: int
    addr: str
    port: int
    launcher: str  # "batchfind" (--nproc-per-node) or "torchrun"
    store: Any = None  # the c10d store; kept alive for the workers while the probe runs

    @property
    def drives_all(self) -> bool:
        return len(self.ranks) == self.world_size


def launcher_rank() -> int | None:
    """This process's rank when torchrun started it (all its variables set), else None."""
    if not all(os.environ.get(var) for var in LAUNCHER_VARS):
        return None
    _launcher_env()
    return int(os.environ["RANK"])


def _launcher_env() -> dict[str, str]:
    """torchrun's variables, checked: a malformed one is one line, not a C++ trace minutes later."""
    env = {var: os.environ[var] for var in LAUNCHER_VARS}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        if not _digits(env[var]):
            raise InputError(f"{var}={env[var]!r}: torchrun's variables are set, but this is not a number; "
                             f"unset {', '.join(LAUNCHER_VARS)} unless torchrun started batchfind")
    if not 0 < int(env["MASTER_PORT"]) < 65536:
        # Port 0 would have the store listen on a port of its own choosing that no rank can find.
        raise InputError(f"MASTER_PORT={env['MASTER_PORT']}: not a port the ranks can meet on (1 to 65535); "
                         f"unset {', '.join(LAUNCHER_VARS)} unless torchrun started batchfind")
    if int(env["RANK"]) >= int(env["WORLD_SIZE"]):
        raise InputError(f"RANK={env['RANK']} is not below WORLD_SIZE={env['WORLD_SIZE']}; unset "
                         f"{', '.join(LAUNCHER_VARS)} unless torchrun started batchfind")
    return env


def _digits(value: str) -> bool:
    # str.isdigit() also takes "²", which int() refuses.
    return value.isascii() and value.isdigit()


def topology(nproc_per_node: int | None, timeout_s: float) -> Topology | None:
    """The ranks this process drives; None for a plain single-process probe."""
    under_torchrun = launcher_rank() is not None
    if not under_torchrun and nproc_per_node is None:
        return None
    if under_torchrun:
        if nproc_per_node is not None:
            raise InputError("probe.nproc_per_node (--nproc-per-node): not used under torchrun, which starts the "
                             "processes itself; drop it")
        return _join(timeout_s)
    # The store is for this machine's ranks only: it listens on loopback (c10d's own socket would
    # listen on every interface). Port 0: the system picks a free one; the store owns the socket.
    import socket

    from torch.distributed import TCPStore

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    store = TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=timeout_s),
                     master_listen_fd=listener.detach())
    ranks = list(range(nproc_per_node))
    return Topology(
        world_size=nproc_per_node, ranks=ranks, local_ranks=ranks, local_world_size=nproc_per_node, nodes=1,
        addr="127.0.0.1", port=port, launcher="batchfind", store=store,
    )


def _wait_listening(addr: str, port: int, deadline: float) -> None:
    import socket

    while True:
        try:
            socket.create_connection((addr, port), timeout=max(0.1, min(5.0, deadline - time.monotonic()))).close()
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens there: {exc.strerror or exc}") from None
        time.sleep(0.5)


def _resolve(addr: str, port: int, deadline: float) -> None:
    """Wait for the store's name to resolve (a pod's name does once the pod is up), until `deadline`:
    c10d would retry one that never does for minutes, a C++ trace each time."""
    while True:
        try:
            socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)
            return
        except (socket.gaierror, UnicodeError) as exc:
            if time.monotonic() > deadline:
                raise InputError(f"MASTER_ADDR={addr}: torchrun's variables are set, but this name did not resolve "
                                 f"within {MEET_S:g} s ({exc.args[-1] if exc.args else exc}); unset "
                                 f"{', '.join(LAUNCHER_VARS)} unless torchrun started batchfind") from None
        time.sleep(0.5)


def _join(timeout_s: float) -> Topology:
    """Meet the other ranks torchrun started, within MEET_S; one line when they do not come."""
    from torch.distributed import rendezvous

    env = _launcher_env()
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    where = f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}"
    deadline = time.monotonic() + MEET_S
    # Rank 0 hosts the store unless torchrun's agent does. A client waits for it here: c10d's own
    # retries would print a C++ stack trace on every attempt.
    hosts = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true"
    _resolve(env["MASTER_ADDR"], int(env["MASTER_PORT"]), deadline)
    try:
        if not hosts:
            _wait_listening(env["MASTER_ADDR"], int(env["MASTER_PORT"]), deadline)
        left = timedelta(seconds=max(1.0, deadline - time.monotonic()))
        store, _, _ = next(rendezvous("env://", timeout=left))
        store.set(f"{PREFIX}/meet/rank{rank}", "1")
        keys = [f"{PREFIX}/meet/rank{r}" for r in range(world)]
        while not store.check(keys):
            if time.monotonic() > deadline:
                missing = [str(r) for r, key in enumerate(keys) if not store.check([key])]
                raise TimeoutError(f"rank {', '.join(missing)} of {world} did not come")
            time.sleep(POLL_S)
        store.set_timeout(timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError, TimeoutError) as exc:  # c10d's store errors are RuntimeErrors
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"RANK={rank} WORLD_SIZE={world} MASTER_ADDR:MASTER_PORT={where} are set, so this process joins a "
            f"torchrun probe, but the ranks did not meet within {MEET_S:g} s ({reason[:200]}); if they were "
            "inherited from another job, unset them"
        ) from None
    given = os.environ.get("LOCAL_WORLD_SIZE", "")
    local_world = int(given) if _digits(given) and int(given) > 0 else world
    return Topology(
        world_size=world, ranks=[rank], local_ranks=[int(env["LOCAL_RANK"])],
        local_world_size=local_world, nodes=max(1, world // local_world),
        addr=env["MASTER_ADDR"], port=int(env["MASTER_PORT"]), launcher="torchrun", store=store,
    )


class AgreementLost(BatchfindError):
    """Another driver stopped (interrupted, crashed, or silent past the timeout) mid-probe."""


class Agreement:
    """Lockstep exchanges between the drivers of one probe over the store.

    Every driver makes the same calls in the same order (each decision follows from results they
    all read), so a counter names each exchange the same way everywhere. Waits poll in short
    slices: a blocking store wait would hold off Ctrl-C and SIGTERM until it timed out.
    """

    def __init__(self, topo: Topology, timeout_s: float):
        from torch.distributed import PrefixStore

        self.store = PrefixStore(f"{PREFIX}/agree", topo.store)
        self.topo, self.timeout_s = topo, timeout_s
        self.round = 0

    def next_round(self) -> None:
        self.round += 1

    def raise_flag(self) -> None:
        """Tell the other drivers a rank failed this round: their ranks are waiting on it."""
        self.store.set(f"{self.round}/failed", "1")

    def flag_raised(self) -> bool:
        """A rank failed this round, or a driver gave up: either way no collective will complete."""
        return self.store.check([f"{self.round}/failed"]) or self.store.check(["abandoned"])

    def exchange(self, mine: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
        """Every rank's reply for this round, in rank order."""
        for rank, reply in mine.items():
            self.store.set(f"{self.round}/rank{rank}", json.dumps(reply))
        keys = {f"{self.round}/rank{rank}": f"rank {rank}" for rank in range(self.topo.world_size)}
        self._wait(keys)
        return [json.loads(self.store.get(key)) for key in keys]

    def decide(self, mine: bool) -> bool:
        """Rank 0's driver decides (whether to go on, say); the others follow."""
        self.next_round()
        key = f"{self.round}/decision"
        if 0 in self.topo.ranks:
            self.store.set(key, json.dumps(mine))
        self._wait({key: "rank 0"})
        return json.loads(self.store.get(key))

    def abandon(self, why: str) -> None:
        """This driver stops early: the others stop waiting for it. Best effort."""
        try:
            self.store.set("abandoned", f"rank {self.topo.ranks[0]}: {why}")
        except Exception:  # noqa: BLE001 - the store may be gone with torchrun's agent
            pass

    def finish(self) -> None:
        """Rank 0's driver may host the store: it leaves last, once every driver has read its last
        exchange, or one gave up. Best effort: the store may already be gone."""
        try:
            for rank in self.topo.ranks:
                self.store.set(f"done/rank{rank}", "1")
            if 0 in self.topo.ranks:
                self._wait({f"done/rank{r}": f"rank {r}" for r in range(self.topo.world_size)}, timeout_s=30)
        except Exception:  # noqa: BLE001 - the report is what matters now, not a goodbye
            pass

    def _wait(self, keys: dict[str, str], timeout_s: float | None = None) -> None:
        """Until every key is set; `keys` maps each to the rank it waits for."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while not self.store.check(list(keys)):
            if self.store.check(["abandoned"]):
                raise AgreementLost(f"distributed probe stopped early: {self.store.get('abandoned').decode()}")
            if time.monotonic() > deadline:
                missing = [who for key, who in keys.items() if not self.store.check([key])]
                raise AgreementLost(
                    f"distributed probe: no word from {', '.join(missing)} within {timeout_s or self.timeout_s:g} s; "
                    "its process stopped or hung"
                )
            time.sleep(POLL_S)
