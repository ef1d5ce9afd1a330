"""Limits on password guessing at the audit pages' HTTP Basic sign-in (:mod:`cordon.server.pages`).

Every wrong password costs an Argon2id verification: about 64 MiB of memory and tens of
milliseconds of CPU with argon2-cffi's defaults (RFC 9106 low-memory profile). Unbounded, 16
concurrent wrong guesses took a server from 624 to 1,383 MB, and one address could try 7.6
passwords a second. :class:`LoginThrottle` bounds both:

* **Concurrent verifications**: at most ``concurrency`` Argon2 verifications run at once (a
  semaphore; by default as many as fit in ``CORDON_AUDIT_LOGIN_MEMORY_MIB``, 128 MiB, given the
  largest ``memory_cost`` among the configured hashes: two for the defaults), at most
  ``max_waiting`` more wait for a slot (each at most ``wait_seconds``), and one client address
  has at most ``per_address_pending`` sign-ins running or waiting. Beyond that: **429** with
  ``Retry-After``, without hashing. Waiting threads are bounded so guesses cannot occupy the
  server's thread pool (the Slack endpoints share it).
* **Per client address**, then **per user name**: after ``address_free`` (5) wrong passwords from
  an address, each next attempt must wait ``base_delay * 2**(n - address_free)`` seconds after the
  last failure (1 s, 2 s, 4 s ... capped at ``max_delay``, 15 minutes): earlier attempts get 429
  with ``Retry-After`` and are not checked at all. A user name gets the same after ``user_free``
  (10) wrong passwords from any addresses (a distributed guesser), so the address limit bites
  first. IPv6 addresses count by their /64 (one host holds a whole /64).
* **The lockout expires**: the delay is capped at ``max_delay`` and a key's failures are
  forgotten ``forget_after`` (1 hour) after its last failure; a correct password clears the
  address's and the user's failures. A user's lockout never applies to an address that signed
  in as that user in the last ``trusted_for`` (30 days) in this process, nor to a browser whose
  correct credentials are already cached (:class:`~cordon.server.pages.PageAuth`), so someone
  guessing a manager's password from elsewhere cannot lock the manager out of their own desk.
  Unknown user names are tracked like real ones (their lockout reveals nothing).

State is per process (memory, at most ``max_tracked`` keys of each kind, the oldest dropped
first): with several replicas an attacker gets each replica's allowance, and a restart forgets
it. That is documented rather than shared through the database because every wrong guess would
then be a database write; put the pages behind an SSO proxy (``X-Cordon-User``) where that
matters.

The client address is the socket peer (uvicorn's ``--proxy-headers`` makes it the forwarded one).
"""

from __future__ import annotations

import ipaddress
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

#: argon2-cffi's default memory cost (KiB), used when no hash says otherwise.
DEFAULT_ARGON2_KIB = 65536
DEFAULT_MEMORY_MIB = 128


class TooManyAttempts(Exception):
    """Refused before hashing: ``retry_after`` seconds (whole, at least 1) to wait; ``reason`` is
    ``throttled`` (the address or user must wait) or ``busy`` (no verification slot)."""

    def __init__(self, retry_after: float, reason: str, detail: str):
        super().__init__(detail)
        self.retry_after = max(1, math.ceil(retry_after))
        self.reason = reason
        self.detail = detail


def concurrency_for(hashes: Iterable[str], memory_mib: int = DEFAULT_MEMORY_MIB) -> int:
    """How many Argon2 verifications fit in ``memory_mib``: ``memory_mib`` divided by the largest
    ``memory_cost`` among ``hashes`` (argon2-cffi's :func:`argon2.extract_parameters`; the default
    64 MiB for none), between 1 and 4."""
    from argon2 import extract_parameters
    from argon2.exceptions import InvalidHashError

    kib = DEFAULT_ARGON2_KIB
    for h in hashes:
        try:
            kib = max(kib, extract_parameters(h).memory_cost)
        except (InvalidHashError, ValueError):
            continue
    return max(1, min(4, (memory_mib * 1024) // kib))


@dataclass
class LoginLimits:
    """The settings of :class:`LoginThrottle` (module docstring); ``concurrency`` ``None``:
    :func:`concurrency_for` the configured hashes."""

    concurrency: int | None = None
    max_waiting: int = 8
    wait_seconds: float = 5.0
    per_address_pending: int = 2
    address_free: int = 5
    user_free: int = 10
    base_delay: float = 1.0
    max_delay: float = 900.0
    forget_after: float = 3600.0
    trusted_for: float = 30 * 86400.0
    max_tracked: int = 10_000

    @classmethod
    def from_env(cls, hashes: Iterable[str] = (), env: dict[str, str] | None = None) -> LoginLimits:
        """``CORDON_AUDIT_LOGIN_MEMORY_MIB`` (default 128) sizes ``concurrency`` for ``hashes``;
        ``CORDON_AUDIT_LOGIN_CONCURRENCY`` sets it outright. ``ValueError`` names a variable that is
        not a positive integer."""
        env = os.environ if env is None else env
        values: dict[str, int] = {}
        for name, default in (("CORDON_AUDIT_LOGIN_MEMORY_MIB", DEFAULT_MEMORY_MIB),
                              ("CORDON_AUDIT_LOGIN_CONCURRENCY", 0)):
            raw = (env.get(name) or "").strip()
            try:
                values[name] = int(raw) if raw else default
            except ValueError:
                values[name] = -1
            if values[name] < 0 or (raw and values[name] == 0):
                raise ValueError(f"{name}: expected a positive integer, got {raw!r}")
        return cls(concurrency=values["CORDON_AUDIT_LOGIN_CONCURRENCY"]
                   or concurrency_for(hashes, values["CORDON_AUDIT_LOGIN_MEMORY_MIB"]))


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0


@dataclass
class LoginThrottle:
    """Per-process guessing limits (module docstring). ``clock`` is monotonic seconds (settable
    for tests). Thread-safe: the pages' dependencies run in Starlette's thread pool."""

    limits: LoginLimits = field(default_factory=LoginLimits)
    clock: Callable[[], float] = time.monotonic
    _by_address: OrderedDict[str, _Failures] = field(default_factory=OrderedDict, repr=False)
    _by_user: OrderedDict[str, _Failures] = field(default_factory=OrderedDict, repr=False)
    _trusted: OrderedDict[tuple[str, str], float] = field(default_factory=OrderedDict, repr=False)
    _pending: dict[str, int] = field(default_factory=dict, repr=False)
    _waiting: int = 0

    def __post_init__(self) -> None:
        self.concurrency = self.limits.concurrency or concurrency_for(())
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._lock = threading.Lock()

    @staticmethod
    def address_key(address: str | None) -> str:
        """The key an address is counted under: IPv4 as is, IPv6 by its /64, anything else
        (``None``, a Unix socket path) as given."""
        if not address:
            return "-"
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:
                return str(ip.ipv4_mapped)
            return str(ipaddress.ip_network(f"{ip}/64", strict=False))
        return str(ip)

    def _delay(self, f: _Failures | None, free: int, now: float) -> float:
        if f is None or f.count < free:
            return 0.0
        wait = min(self.limits.base_delay * 2 ** (f.count - free), self.limits.max_delay)
        return max(0.0, f.last + wait - now)

    def _get(self, table: OrderedDict, key, now: float):
        f = table.get(key)
        if f is not None and now - f.last > self.limits.forget_after:
            del table[key]
            return None
        return f

    def retry_after(self, user: str, address: str | None) -> float:
        """Seconds ``address`` must still wait before a password for ``user`` is checked (0:
        allowed now): the longer of the address's delay and, unless the address is trusted for
        that user, the user's."""
        now = self.clock()
        addr = self.address_key(address)
        with self._lock:
            wait = self._delay(self._get(self._by_address, addr, now), self.limits.address_free, now)
            trusted = self._trusted.get((user, addr), -math.inf) > now
            if not trusted:
                wait = max(wait, self._delay(self._get(self._by_user, user, now), self.limits.user_free, now))
        return wait

    def check(self, user: str, address: str | None) -> None:
        """Raise :class:`TooManyAttempts` (``throttled``) when :meth:`retry_after` is not 0."""
        wait = self.retry_after(user, address)
        if wait > 0:
            raise TooManyAttempts(wait, "throttled", f"too many wrong passwords: try again in {math.ceil(wait)} s")

    @contextmanager
    def slot(self, address: str | None) -> Iterator[None]:
        """Hold one of the ``concurrency`` verification slots for the block, waiting at most
        ``wait_seconds`` behind at most ``max_waiting`` others; raises :class:`TooManyAttempts`
        (``busy``) when the address already has ``per_address_pending`` sign-ins pending, the
        queue is full, or no slot came in time."""
        addr = self.address_key(address)
        with self._lock:
            if self._pending.get(addr, 0) >= self.limits.per_address_pending:
                raise TooManyAttempts(1, "busy", "this address has sign-ins being checked already")
            self._pending[addr] = self._pending.get(addr, 0) + 1
        try:
            if not self._slots.acquire(blocking=False):
                with self._lock:
                    if self._waiting >= self.limits.max_waiting:
                        raise TooManyAttempts(1, "busy", "too many sign-ins being checked: try again shortly")
                    self._waiting += 1
                try:
                    got = self._slots.acquire(timeout=self.limits.wait_seconds)
                finally:
                    with self._lock:
                        self._waiting -= 1
                if not got:
                    raise TooManyAttempts(1, "busy", "too many sign-ins being checked: try again shortly")
            try:
                yield
            finally:
                self._slots.release()
        finally:
            with self._lock:
                left = self._pending.get(addr, 1) - 1
                if left:
                    self._pending[addr] = left
                else:
                    self._pending.pop(addr, None)

    def _bump(self, table: OrderedDict, key, now: float) -> None:
        f = self._get(table, key, now) or _Failures()
        f.count += 1
        f.last = now
        table[key] = f
        table.move_to_end(key)
        while len(table) > self.limits.max_tracked:
            table.popitem(last=False)

    def failed(self, user: str, address: str | None) -> None:
        """Count a wrong password for ``user`` from ``address``."""
        now = self.clock()
        addr = self.address_key(address)
        with self._lock:
            self._bump(self._by_address, addr, now)
            self._bump(self._by_user, user, now)

    def succeeded(self, user: str, address: str | None) -> None:
        """A correct password: clear the address's and the user's failures and trust the
        address for that user for ``trusted_for`` seconds."""
        now = self.clock()
        addr = self.address_key(address)
        with self._lock:
            self._by_address.pop(addr, None)
            self._by_user.pop(user, None)
            self._trusted[(user, addr)] = now + self.limits.trusted_for
            self._trusted.move_to_end((user, addr))
            while len(self._trusted) > self.limits.max_tracked:
                self._trusted.popitem(last=False)
