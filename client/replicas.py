"""Where requests go: the endpoints a detector was given, and the replicas behind them, with no I/O.

A detector takes one endpoint or several (``host:port``, ``http(s)://``, ``grpc(s)://`` or ``dns:///name:port``).
``dns:///`` names a Kubernetes headless Service: the detector resolves it to one replica per A/AAAA record
(:func:`addresses_from_addrinfo`), again every :data:`RESOLVE_EVERY_S` seconds and whenever every replica it
knows has failed, so pods that come and go are followed. :class:`Replicas` spreads requests round-robin over the
replicas not in a cool-down, and puts a replica that stopped answering in a cool-down that doubles per failure
in a row. The detectors do the resolving and the waiting; every decision is made here, on times they pass in.
"""

from __future__ import annotations

import math
import random
import socket
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aigi.client.retry import backoff_delay
from aigi.errors import SettingsError

# how often a dns:/// name is resolved again while its replicas answer
RESOLVE_EVERY_S = 30.0
# the least time between two resolutions when every replica failed (a name that does not resolve is not hammered)
MIN_RESOLVE_GAP_S = 1.0

# scheme -> (what it says about TLS, the protocols it fits)
_SCHEMES = {
    "http://": (False, ("grpc", "http")),
    "https://": (True, ("grpc", "http")),
    "grpc://": (False, ("grpc",)),
    "grpcs://": (True, ("grpc",)),
}
DNS_SCHEME = "dns:///"


@dataclass(frozen=True)
class Endpoint:
    """One endpoint a detector was given.

    Attributes:
        address: what tritonclient connects to (``host:port``); for a ``dns:///`` target, the name and port.
        dns: ``dns:///``: one replica per address the name resolves to.
        tls: ``True`` for ``https://`` / ``grpcs://``, ``False`` for ``http://`` / ``grpc://``, ``None`` without.
    """

    address: str
    dns: bool = False
    tls: bool | None = None

    def __str__(self) -> str:
        return DNS_SCHEME + self.address if self.dns else self.address

    def host_port(self) -> tuple[str, int]:
        """Host and port of the address (IPv6 hosts without their brackets)."""
        return split_host_port(self.address)


def split_host_port(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` into host and port.

    Raises:
        SettingsError: no port, or a port that is not a number.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or (":" in host and not host.startswith("[")):
        raise SettingsError(f"{address!r} is not host:port")
    return host.strip("[]"), int(port)


def parse_endpoint(text: str, protocol: str) -> Endpoint:
    """One endpoint from its text (see the module docstring).

    Raises:
        SettingsError: an empty or malformed endpoint, a ``grpc(s)://`` URL for HTTP, a ``dns:`` form other than
            ``dns:///name:port``.
    """
    text = text.strip().rstrip("/")
    if text.startswith(DNS_SCHEME):
        address = text[len(DNS_SCHEME) :]
        split_host_port(address)  # checked now, resolved later
        return Endpoint(address, dns=True)
    if text.startswith("dns:"):
        raise SettingsError(f"{text!r}: only dns:///name:port is supported (no DNS server authority)")
    tls = None
    for scheme, (scheme_tls, protocols) in _SCHEMES.items():
        if text.startswith(scheme):
            if protocol not in protocols:
                raise SettingsError(f"{text!r} is a {scheme} URL but the protocol is {protocol!r}")
            text, tls = text[len(scheme) :], scheme_tls
            break
    if not text or "://" in text:
        raise SettingsError(f"{text!r} is not an endpoint (host:port, http(s)://, grpc(s):// or dns:///name:port)")
    return Endpoint(text, tls=tls)


def parse_endpoints(url: str | Iterable[str], protocol: str) -> tuple[Endpoint, ...]:
    """Endpoints from one string (commas separate several) or a list of them, duplicates dropped.

    Raises:
        SettingsError: no endpoint, or one that :func:`parse_endpoint` refuses.
    """
    texts = [url] if isinstance(url, str) else list(url)
    parts = [part for text in texts for part in str(text).split(",") if part.strip()]
    endpoints = tuple(dict.fromkeys(parse_endpoint(part, protocol) for part in parts))
    if not endpoints:
        raise SettingsError("no endpoint given: url must name at least one host:port")
    return endpoints


def tls_setting(endpoints: Sequence[Endpoint], ssl: bool, certificates_given: bool) -> bool:
    """Whether to use TLS: asked for (``ssl``, a certificate option) or said by a URL, never silently plaintext.

    Raises:
        SettingsError: a plaintext URL (``http://``, ``grpc://``) next to TLS, or with ``ssl=True`` or certificates.
    """
    said = {endpoint.tls for endpoint in endpoints} - {None}
    if said == {True, False}:
        raise SettingsError("the endpoints mix plaintext (http://, grpc://) and TLS (https://, grpcs://) URLs")
    if False in said and (ssl or certificates_given):
        what = "ssl=True" if ssl else "a certificate option"
        raise SettingsError(f"{what} with a plaintext URL (http://, grpc://); use https:// or grpcs:// for TLS")
    return ssl or certificates_given or True in said


def addresses_from_addrinfo(infos: Iterable[Sequence[Any]], port: int) -> list[str]:
    """``host:port`` per distinct address of a ``socket.getaddrinfo`` answer (``[v6]:port`` for IPv6), sorted."""
    found = set()
    for family, *_, sockaddr in infos:
        host = str(sockaddr[0])
        found.add(f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}")
    return sorted(found)


@dataclass
class Replica:
    """One replica's health as the client saw it."""

    address: str
    failures: int = 0  # unanswered calls in a row (each one counted once per outage)
    down_until: float = 0.0  # in a cool-down until then
    down_since: float = -math.inf  # when it was last marked down
    answered: bool = False  # it has answered a call of this detector


class Replicas:
    """The replicas of a detector and their cool-downs; thread-safe. Times are ``time.monotonic()`` seconds.

    Args:
        endpoints: the detector's endpoints; each ``dns:///`` one stands for the addresses it resolves to.
        resolve_every: seconds between resolutions of the ``dns:///`` names while their replicas answer.
    """

    def __init__(self, endpoints: Sequence[Endpoint], resolve_every: float = RESOLVE_EVERY_S) -> None:
        self.resolve_every = float(resolve_every)
        self.names = [endpoint for endpoint in endpoints if endpoint.dns]
        self._static = [endpoint.address for endpoint in endpoints if not endpoint.dns]
        self._resolved: dict[Endpoint, list[str]] = {name: [] for name in self.names}
        self._state: dict[str, Replica] = {}
        self._order: list[str] = []
        self._cursor = 0
        self._lock = threading.Lock()
        self.next_resolve = 0.0  # due at once: the names have not been resolved yet
        self.last_resolve = -math.inf
        self.resolve_error = ""
        self._rebuild()
        # clients that start together do not all send their first request to the same replica
        self._cursor = random.randrange(len(self._order)) if self._order else 0

    # -- the set of replicas ------------------------------------------------------------------------

    @property
    def addresses(self) -> list[str]:
        """Every replica known now, in round-robin order."""
        with self._lock:
            return list(self._order)

    def state(self, address: str) -> Replica | None:
        """A copy of one replica's state (``None`` when unknown)."""
        with self._lock:
            replica = self._state.get(address)
            return None if replica is None else Replica(**vars(replica))

    def claim_resolve(self, now: float) -> list[Endpoint]:
        """The ``dns:///`` names to resolve now, claimed by the caller (others get ``[]`` meanwhile).

        Due every :attr:`resolve_every` seconds, and at most every :data:`MIN_RESOLVE_GAP_S` while no replica is
        up (every one failed, or none is known yet).
        """
        if not self.names:
            return []
        with self._lock:
            stuck = self._all_down(now) and now >= self.last_resolve + MIN_RESOLVE_GAP_S
            if now < self.next_resolve and not stuck:
                return []
            self.last_resolve, self.next_resolve = now, now + self.resolve_every
            return list(self.names)

    def resolved(self, found: Mapping[Endpoint, Sequence[str] | BaseException]) -> list[str]:
        """Take the addresses the names resolved to (an exception keeps a name's previous addresses).

        Returns:
            The addresses no longer served (their clients may be closed once calls on them are over).
        """
        errors = []
        with self._lock:
            for name, addresses in found.items():
                if isinstance(addresses, BaseException):
                    errors.append(f"cannot resolve {name}: {addresses}")
                elif name in self._resolved:
                    self._resolved[name] = list(addresses)
            self.resolve_error = "; ".join(errors)
            return self._rebuild()

    def _rebuild(self) -> list[str]:
        before = set(self._order)
        resolved = [address for name in self.names for address in self._resolved[name]]
        self._order = list(dict.fromkeys(self._static + resolved))
        self._state = {address: self._state.get(address) or Replica(address) for address in self._order}
        self._cursor %= max(1, len(self._order))
        return sorted(before - set(self._order))

    # -- picking -------------------------------------------------------------------------------------

    def pick(self, now: float, exclude: Iterable[str] = (), advance: bool = True) -> str | None:
        """The next replica, round-robin, that is not in a cool-down nor in ``exclude``; ``None`` when none is.

        Args:
            advance: move the round-robin on (``False`` only looks).
        """
        excluded = set(exclude)
        with self._lock:
            count = len(self._order)
            for step in range(count):
                index = (self._cursor + step) % count
                address = self._order[index]
                if address not in excluded and self._state[address].down_until <= now:
                    if advance:
                        self._cursor = index + 1
                    return address
            return None

    def soonest(self, exclude: Iterable[str] = ()) -> str | None:
        """The replica whose cool-down ends first (for a last try when the caller's time is up)."""
        excluded = set(exclude)
        with self._lock:
            candidates = [replica for replica in self._state.values() if replica.address not in excluded]
            return min(candidates, key=lambda replica: replica.down_until).address if candidates else None

    def next_up(self, now: float) -> float | None:
        """When the first replica leaves its cool-down (``now`` when one is up); ``None`` when none is known."""
        with self._lock:
            if not self._state:
                return None
            return max(now, min(replica.down_until for replica in self._state.values()))

    def all_down(self, now: float) -> bool:
        """Whether no replica is up (every one in a cool-down, or none known)."""
        with self._lock:
            return self._all_down(now)

    def _all_down(self, now: float) -> bool:
        return all(replica.down_until > now for replica in self._state.values())

    # -- what calls found out ------------------------------------------------------------------------

    def mark_down(self, address: str, now: float, sent_at: float, backoff: float) -> float:
        """A call sent at ``sent_at`` found nobody answering: a cool-down of about ``backoff * 2**(failures-1)``.

        A failure of a call that was sent before the replica was last marked down, or while it still is, belongs
        to an outage already counted: several calls in flight when a replica dies lengthen its cool-down once.

        Returns:
            The cool-down in seconds (0 when the failure was already counted, or the replica is no longer known).
        """
        with self._lock:
            replica = self._state.get(address)
            if replica is None or replica.down_until > now or sent_at < replica.down_since:
                return 0.0
            replica.failures += 1
            cooldown = backoff_delay(replica.failures - 1, backoff)
            replica.down_since, replica.down_until = now, now + cooldown
            return cooldown

    def mark_up(self, address: str, sent_at: float) -> None:
        """A call sent at ``sent_at`` got an answer: the replica is up (unless it was marked down since)."""
        with self._lock:
            replica = self._state.get(address)
            if replica is not None:
                replica.answered = True
                if sent_at >= replica.down_since:
                    replica.failures, replica.down_until = 0, 0.0

    def has_answered(self, address: str) -> bool:
        """Whether the replica ever answered a call (a TLS failure of one that did is a restart, not a setting)."""
        with self._lock:
            replica = self._state.get(address)
            return replica is not None and replica.answered
