"""Where the work of a search runs: in this process, in a local process pool, or on a Ray cluster.

One interface, two executors, chosen by a setting (``backend``):

* :class:`LocalExecutor` (the embedded default): *actors* (the shards of a
  :class:`~ballistic.retrieval.sharded.ShardedIndex`) are objects in this process; *tasks* (the
  rotation-prior screens and the pair comparisons of :class:`~ballistic.retrieval.search.Retriever`) run
  here (``workers=1``) or in a pool of forked processes. Nothing to set up and no Ray import.
* :class:`RayExecutor`: actors are Ray actors (``max_restarts``: Ray restarts a dead shard, which
  reloads its snapshot and replays rows; calls in flight are retried, ``max_task_retries``), tasks are
  Ray tasks of one CPU each (retried when their worker or node dies, ``task_retries``).

The callers never branch on the backend: ``start`` / ``call`` / ``restart`` an actor, ``map`` a
module-level function over tasks with a shared ``context`` (installed once per worker process, or put
once in Ray's object store) and an optional ``stop`` event. A task that raises re-raises its own
exception here; work that is lost on every retry raises :class:`~ballistic.errors.RerankError` and a
shard that stays unreachable :class:`~ballistic.errors.ShardUnavailableError`: a result is never
silently missing part of its work.

Ray security (settings in :class:`RaySettings`)
-----------------------------------------------
Ray runs arbitrary code for anyone who can reach its ports, so:

* **token authentication** is always on. Ray 2.60 implements it natively
  (``RAY_AUTH_MODE=token``: every gRPC/HTTP request between Ray processes and
  drivers carries the shared token, requests without it are refused). This
  module sets ``RAY_AUTH_MODE=token`` and the token in this process's
  environment (inherited by the Ray processes it starts) before Ray starts:
  the token is ``RaySettings.auth_token``, else the file
  ``RaySettings.auth_token_path`` (``RAY_AUTH_TOKEN_PATH``), else an existing
  ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` in the environment, else Ray's
  default file ``~/.ray/auth_token``; an embedded cluster with none of these
  gets a fresh random 256-bit token that lives only in the process environment
  (never written to disk).
  Connecting to an existing cluster (``address``) without a token is
  refused (:class:`ScaleOutConfigError`), and so is an address that is neither loopback nor private
  (RFC 1918 / unique-local; a Ray cluster belongs on its own network). Nodes of a cluster must be
  started with the same ``RAY_AUTH_MODE=token`` and token, e.g.
  ``RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=/etc/ballistic/ray_token ray start
  --head --node-ip-address=10.0.0.5 --include-dashboard=false`` (token file
  readable by the service user only); :func:`secure_ray_env` sets them for
  processes started from Python (``ray.cluster_utils.Cluster`` in the tests);
* **no dashboard** (``include_dashboard=False``; it is an unauthenticated-by-
  default HTTP job API in older Ray versions and is not needed here);
* **loopback binding**: the embedded cluster's node address is ``127.0.0.1``
  (``RaySettings.node_ip``), so GCS, raylets, object managers and workers
  listen on loopback only. Ray resolves ``127.0.0.1`` in a bootstrap address to
  the host's outward IP unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which
  this module sets for loopback use (it only changes how Ray picks the local
  node IP). For a real multi-node cluster set ``node_ip`` / ``ray start
  --node-ip-address`` to the private interface of each node and firewall the
  Ray ports to the cluster's own addresses;
* usage statistics off (``RAY_USAGE_STATS_ENABLED=0``).
"""
from __future__ import annotations

import ipaddress
import multiprocessing as mp
import os
import secrets
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from ballistic.errors import RerankError, ScaleOutConfigError, SearchCancelled, ShardUnavailableError

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "make_executor", "RaySettings", "secure_ray_env",
           "loopback_node_args", "check_cluster_address"]

# ---------------------------------------------------------------------------------------------------- Ray settings
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class RaySettings:
    """How to reach (or start) Ray, and the fault-tolerance knobs. See the module docstring.

    address : ``None`` starts an embedded single-node Ray bound to ``node_ip`` (loopback), always a new one
        (never one found running on the machine); else the GCS address ``host:port`` of a running cluster
        (started with token auth).
    auth_token, auth_token_path : the cluster's token (else ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH``;
        an embedded cluster gets a random one when none is given).
    num_cpus, object_store_memory : size of the embedded cluster.
    node_ip : address the embedded node binds to (loopback by default).
    max_restarts : Ray restarts of a dead shard actor (each reloads its snapshot and replays rows).
    max_task_retries : retries of a shard call in flight when its actor died.
    task_retries : retries of a re-ranking batch whose worker or node died.
    call_timeout_s : one shard call; ``retries`` more attempts (with ``retry_wait_s`` pauses) after a timeout
        or an actor that is restarting, then :class:`ShardUnavailableError`.
    actor_options : extra ``.options(...)`` for the shard actors (``resources``, ``num_cpus``,
        ``scheduling_strategy``...). Defaults: ``num_cpus=0`` (a shard holds memory, it does not compute),
        ``scheduling_strategy="SPREAD"``.
    """

    address: str | None = None
    auth_token: str | None = field(default=None, repr=False)
    auth_token_path: str | None = None
    num_cpus: int | None = None
    object_store_memory: int | None = None
    node_ip: str = "127.0.0.1"
    namespace: str = "ballistic"
    max_restarts: int = 3
    max_task_retries: int = 3
    task_retries: int = 3
    call_timeout_s: float = 60.0
    retries: int = 2
    retry_wait_s: float = 1.0
    actor_options: dict = field(default_factory=dict)


def _refresh_ray_auth_config() -> None:
    """Make an already imported Ray see the auth env vars we just set (Ray caches its config)."""
    import sys
    if "ray" not in sys.modules:
        return
    from ray._raylet import AuthenticationTokenLoader, Config
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _default_token_file() -> bool:
    """Ray's own default token file (``ray get-auth-token --generate`` writes it)."""
    return (Path.home() / ".ray" / "auth_token").is_file()


def secure_ray_env(token: str | None = None, *, token_path: str | None = None, loopback: bool = True) -> dict:
    """Set this process's environment for a token-authenticated Ray (inherited by Ray processes it starts).

    Sets ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN`` (``token``; else ``RAY_AUTH_TOKEN_PATH``=
    ``token_path``; else keeps an existing ``RAY_AUTH_TOKEN``/``RAY_AUTH_TOKEN_PATH``; else a new random
    token), ``RAY_USAGE_STATS_ENABLED=0`` and, with ``loopback``, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
    (Ray then takes 127.0.0.1 as this node's address instead of resolving the outward IP).

    Returns the variables set (the token itself is not included).
    """
    env = os.environ
    out = {"RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    if token is not None:
        if len(token) < 32:
            raise ScaleOutConfigError("Ray auth token too short: use at least 32 random characters")
        env["RAY_AUTH_TOKEN"] = token
        env.pop("RAY_AUTH_TOKEN_PATH", None)
    elif token_path is not None:
        if not Path(token_path).is_file():
            raise ScaleOutConfigError(f"Ray auth token file {token_path} does not exist")
        env.pop("RAY_AUTH_TOKEN", None)
        env["RAY_AUTH_TOKEN_PATH"] = out["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    elif not env.get("RAY_AUTH_TOKEN") and not env.get("RAY_AUTH_TOKEN_PATH") and not _default_token_file():
        env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    if loopback:
        out["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env.update(out)
    import sys
    if loopback and "ray" in sys.modules:
        # ray_constants read the variable at import; a Ray imported earlier needs the same value here
        import ray._private.ray_constants as rc
        rc.ENABLE_RAY_CLUSTER = False
    _refresh_ray_auth_config()
    return out


def loopback_node_args(**kwargs) -> dict:
    """Arguments for ``ray.cluster_utils.Cluster`` nodes (``head_node_args`` / ``add_node``) bound to loopback,
    without dashboard; call :func:`secure_ray_env` first so the nodes start with token auth."""
    return {"node_ip_address": "127.0.0.1", "include_dashboard": False, **kwargs}


def _ray_or_fail():
    try:
        import ray
    except ImportError as e:
        raise ScaleOutConfigError("backend='ray' needs Ray: pip install 'ballistic[scale]'") from e
    return ray


def _short(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return (s[0] if s else type(e).__name__)[:300]




def check_cluster_address(address: str) -> str:
    """``address`` (``host:port`` of a Ray cluster) if its host is loopback or private, else
    :class:`ScaleOutConfigError`: a cluster that runs arbitrary code for whoever reaches its ports belongs on
    the machine itself or on the cluster's own (RFC 1918 / unique-local) network, never on a public address.
    Host names are resolved; every address they resolve to must qualify."""
    import socket
    host, sep, port = str(address).strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ScaleOutConfigError(f"Ray cluster address {address!r}: expected host:port (e.g. 10.0.0.5:6379)")
    host = host.strip("[]")
    try:
        ips = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            ips = {ipaddress.ip_address(a[4][0].split("%")[0]) for a in socket.getaddrinfo(host, int(port))}
        except OSError as e:
            raise ScaleOutConfigError(f"Ray cluster address {address!r}: host {host!r} does not resolve ({e})") \
                from None
    bad = sorted(str(ip) for ip in ips if not (ip.is_loopback or ip.is_private) or ip.is_unspecified)
    if bad:
        raise ScaleOutConfigError(
            f"refusing Ray cluster address {address!r}: {', '.join(bad)} is neither loopback nor a private "
            "address; run the cluster on the service's own network (e.g. 10.x, 172.16-31.x, 192.168.x) and "
            "firewall its ports")
    return address


# ---------------------------------------------------------------------------------------------------- executors
class Executor(Protocol):
    """What :class:`~ballistic.retrieval.sharded.ShardedIndex` and :class:`~ballistic.retrieval.search.Retriever`
    need from where they run (see the module notes)."""

    backend: str

    @property
    def slots(self) -> int:                  # tasks that run at once
        ...

    def start(self, name: str, cls: type, args: tuple) -> None: ...

    def restart(self, name: str) -> None: ...

    def call(self, calls: dict[str, tuple[str, tuple]]) -> dict[str, Any]: ...

    def stop(self, names: Sequence[str]) -> None: ...

    def map(self, fn: Callable[[Any, Any], Any], tasks: Sequence, *, context: Any = None,
            stop: threading.Event | None = None, slots: int | None = None) -> list: ...

    def close(self) -> None: ...


def _check_stop(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise SearchCancelled("the search was stopped (its stop event was set)")


_POOL_CONTEXT: dict[str, Any] = {}


def _pool_init(context) -> None:
    _POOL_CONTEXT["context"] = context


def _pool_run(fn, task):
    return fn(_POOL_CONTEXT.get("context"), task)


class LocalExecutor:
    """Actors as objects in this process; tasks here (``workers=1``) or in a pool of ``workers`` forked
    processes, which keeps running (with its ``context`` installed once per process) until the context
    changes or :meth:`close`."""

    backend = "local"

    def __init__(self, workers: int = 1) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise ScaleOutConfigError(f"workers must be a positive integer, got {workers!r}")
        self.workers = workers
        self.actors: dict[str, Any] = {}
        self._actor_args: dict[str, tuple[type, tuple]] = {}
        self._pool: ProcessPoolExecutor | None = None
        self._pool_context: Any = None
        self._lock = threading.Lock()

    @property
    def slots(self) -> int:
        return self.workers

    # ------------------------------------------------------------------ actors
    def start(self, name: str, cls: type, args: tuple) -> None:
        self._actor_args[name] = (cls, args)
        self.actors[name] = cls(*args)

    def restart(self, name: str) -> None:
        """Drop the actor's memory and construct it again, as Ray restarts a dead actor."""
        cls, args = self._actor_args[name]
        self.actors[name] = cls(*args)

    def call(self, calls: dict[str, tuple[str, tuple]]) -> dict[str, Any]:
        return {n: getattr(self.actors[n], m)(*a) for n, (m, a) in calls.items()}

    def stop(self, names: Sequence[str]) -> None:
        for n in names:
            self.actors.pop(n, None)
            self._actor_args.pop(n, None)

    # ------------------------------------------------------------------ tasks
    def _pool_for(self, context) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is not None and self._pool_context is not context:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
            if self._pool is None:
                ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
                self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_pool_init,
                                                 initargs=(context,))
                self._pool_context = context
            return self._pool

    def map(self, fn, tasks, *, context=None, stop=None, slots: int | None = None) -> list:
        """``[fn(context, t) for t in tasks]``, in order; ``fn`` must be a module-level function when
        ``workers > 1`` (``slots=1``: in this process). Raises :class:`~ballistic.errors.SearchCancelled` once
        ``stop`` is set."""
        tasks = list(tasks)
        if self.workers <= 1 or slots == 1:
            out = []
            for t in tasks:
                _check_stop(stop)
                out.append(fn(context, t))
            return out
        _check_stop(stop)
        pool = self._pool_for(context)
        futures = [pool.submit(_pool_run, fn, t) for t in tasks]
        try:
            out = []
            for f in futures:
                while True:
                    try:
                        out.append(f.result(timeout=0.25))
                        break
                    except TimeoutError:
                        _check_stop(stop)
            return out
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    def close(self) -> None:
        self.actors.clear()
        self._actor_args.clear()
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
                self._pool_context = None

    def __repr__(self) -> str:
        return f"LocalExecutor(workers={self.workers})"


def _ray_run(fn, context, task):
    """Ray task body: ``context`` arrives resolved from the object store."""
    return fn(context, task)


class RayExecutor:
    """Actors as Ray actors (restartable), tasks as Ray tasks of one CPU (retried). See the module notes."""

    backend = "ray"

    def __init__(self, settings: RaySettings | None = None) -> None:
        self.s = settings or RaySettings()
        if self.s.address is not None:
            check_cluster_address(self.s.address)
        ray = _ray_or_fail()
        self._started_ray = False
        self._connect(ray)
        self.ray = ray
        self._actor_opts = {"num_cpus": 0, "scheduling_strategy": "SPREAD", **self.s.actor_options,
                            "max_restarts": int(self.s.max_restarts),
                            "max_task_retries": int(self.s.max_task_retries)}
        self._remote_classes: dict[type, Any] = {}
        self._task = ray.remote(_ray_run).options(num_cpus=1, max_retries=int(self.s.task_retries))
        self.handles: dict[str, Any] = {}
        self._context: tuple[Any, Any] | None = None

    def _connect(self, ray) -> None:
        s = self.s
        loop = s.address is None and s.node_ip in _LOOPBACK or \
            s.address is not None and s.address.rsplit(":", 1)[0].strip("[]") in _LOOPBACK
        have = s.auth_token or s.auth_token_path or os.environ.get("RAY_AUTH_TOKEN") \
            or os.environ.get("RAY_AUTH_TOKEN_PATH") or _default_token_file()
        if s.address is not None and not have:
            raise ScaleOutConfigError(
                f"refusing to connect to Ray at {s.address} without token authentication: give "
                "RaySettings.auth_token / auth_token_path or set RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH (the "
                "cluster must run with RAY_AUTH_MODE=token)")
        secure_ray_env(s.auth_token, token_path=s.auth_token_path, loopback=loop)
        from ray._raylet import AuthenticationMode, get_authentication_mode
        if get_authentication_mode() != AuthenticationMode.TOKEN:
            raise ScaleOutConfigError("Ray token authentication could not be enabled (RAY_AUTH_MODE=token "
                                      "was not taken); refusing to start Ray without it")
        if ray.is_initialized():
            return                               # the caller's connection (it must use the same settings)
        kw: dict = {"namespace": s.namespace, "log_to_driver": False, "configure_logging": False}
        if s.address is None:
            # "local" always starts a new private instance; None would attach to any Ray found running on
            # this machine (RAY_ADDRESS, /tmp/ray/ray_current_cluster, a gcs_server process): another user's
            kw.update(address="local", include_dashboard=False, num_cpus=s.num_cpus,
                      object_store_memory=s.object_store_memory)
            if s.node_ip not in _LOOPBACK:
                kw["_node_ip_address"] = s.node_ip
        else:
            kw["address"] = s.address
        ray.init(**kw)
        self._started_ray = True

    @property
    def slots(self) -> int:
        """The cluster's CPUs (tasks of one CPU that can run at once)."""
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    # ------------------------------------------------------------------ actors
    def start(self, name: str, cls: type, args: tuple) -> None:
        rc = self._remote_classes.get(cls)
        if rc is None:
            rc = self._remote_classes[cls] = self.ray.remote(cls).options(**self._actor_opts)
        self.handles[name] = rc.remote(*args)

    def restart(self, name: str) -> None:
        """Kill the actor and let Ray restart it (its constructor runs again), as after a crash."""
        self.ray.kill(self.handles[name], no_restart=False)

    def call(self, calls: dict[str, tuple[str, tuple]]) -> dict[str, Any]:
        ray = self.ray
        from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError, RayTaskError
        pending = {n: getattr(self.handles[n], m).remote(*a) for n, (m, a) in calls.items()}
        out: dict[str, Any] = {}
        attempt: dict[str, int] = {n: 0 for n in calls}
        while pending:
            for name, ref in list(pending.items()):
                try:
                    out[name] = ray.get(ref, timeout=self.s.call_timeout_s)
                    del pending[name]
                    continue
                except RayTaskError as e:        # the actor's own code raised: surface that exception
                    raise e.as_instanceof_cause() from None
                except ActorDiedError as e:      # restarts used up, or unschedulable: for good
                    raise ShardUnavailableError(_shard_name(name),
                                                f"actor died and will not restart ({_short(e)})") from e
                except (RayActorError, GetTimeoutError) as e:
                    attempt[name] += 1
                    if attempt[name] > self.s.retries:
                        raise ShardUnavailableError(
                            _shard_name(name), f"no answer after {attempt[name]} attempts of "
                                               f"{self.s.call_timeout_s:g} s ({type(e).__name__}: {_short(e)})") from e
                    if isinstance(e, GetTimeoutError):
                        ray.cancel(ref, force=False)
                    time.sleep(self.s.retry_wait_s)
                    m, a = calls[name]
                    pending[name] = getattr(self.handles[name], m).remote(*a)
        return out

    def stop(self, names: Sequence[str]) -> None:
        # with no Ray connection left (shut down, or lost) the actors went with it; calling Ray now would
        # connect anew (ray.kill initialises Ray on its own) and can wait forever for a cluster that is gone
        connected = self.ray.is_initialized()
        for n in names:
            h = self.handles.pop(n, None)
            if h is not None and connected:
                try:
                    self.ray.kill(h, no_restart=True)
                except Exception:               # noqa: BLE001 - best effort on shutdown
                    pass

    # ------------------------------------------------------------------ tasks
    def _context_ref(self, context):
        if self._context is None or self._context[0] is not context:
            self._context = (context, self.ray.put(context))
        return self._context[1]

    def map(self, fn, tasks, *, context=None, stop=None, slots: int | None = None) -> list:
        """``[fn(context, t) for t in tasks]`` as Ray tasks (at most ``slots``, default :attr:`slots`, in flight),
        in order."""
        ray = self.ray
        from ray.exceptions import RayError, RayTaskError
        tasks = list(tasks)
        if not tasks:
            return []
        _check_stop(stop)
        ctx = self._context_ref(context)
        slots = max(1, int(slots or self.slots))
        results: dict[int, Any] = {}
        inflight: dict[Any, int] = {}
        nxt = 0
        try:
            while nxt < len(tasks) or inflight:
                while nxt < len(tasks) and len(inflight) < slots:
                    inflight[self._task.remote(fn, ctx, tasks[nxt])] = nxt
                    nxt += 1
                done, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5)
                _check_stop(stop)
                for ref in done:
                    j = inflight.pop(ref)
                    try:
                        results[j] = ray.get(ref)
                    except RayTaskError as e:
                        raise e.as_instanceof_cause() from None
                    except RayError as e:
                        raise RerankError(f"task {j} of {len(tasks)} lost after {self.s.task_retries} retries: "
                                          f"{type(e).__name__}: {_short(e)}") from e
        except BaseException:
            for ref in inflight:
                try:
                    ray.cancel(ref, force=False)
                except Exception:               # noqa: BLE001 - best effort
                    pass
            raise
        return [results[j] for j in range(len(tasks))]

    def close(self) -> None:
        self.stop(list(self.handles))
        self._context = None
        if self._started_ray and self.ray.is_initialized():
            self.ray.shutdown()
        self._started_ray = False

    def __repr__(self) -> str:
        return f"RayExecutor(address={self.s.address!r})"


def _shard_name(actor_key: str) -> str:
    """Shard name of an actor key ``"<index name>:<shard>"`` (see ShardedIndex)."""
    return actor_key.rsplit(":", 1)[-1]


def make_executor(backend: str = "local", *, workers: int = 1, ray: RaySettings | None = None,
                  address: str | None = None) -> LocalExecutor | RayExecutor:
    """The executor a setting names: ``"local"`` (``workers`` processes, 1 = this process; never imports
    Ray) or ``"ray"`` (``ray`` settings; ``address`` of a running cluster, else an embedded one)."""
    if backend == "local":
        if address is not None or ray is not None:
            raise ScaleOutConfigError("a Ray address / Ray settings given with backend='local'; use backend='ray'")
        return LocalExecutor(workers)
    if backend == "ray":
        settings = ray or RaySettings()
        if address is not None:
            settings = RaySettings(**{**asdict(settings), "address": address})
        return RayExecutor(settings)
    raise ScaleOutConfigError(f"backend must be 'local' or 'ray', got {backend!r}")
