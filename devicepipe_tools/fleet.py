"""The registry of the producer's simulated fleet (``producer.simulate``), for the local stack and the demo.

Devices ``dev-%05d`` of branch ``branch-%03d`` (device ``d`` in branch ``d % branches``) with the simulation's
metrics: ``temp_c`` (gauss(21, 2)), ``humidity`` (0.3..0.6), ``battery`` (0.2..1.0), ``door`` (a string). Thresholds
are set so that some simulated readings fall outside them, and the fleet's registry differs from the fleet as real
ones do: its last ``unregistered`` devices produce readings but are not registered, and ``silent`` more devices
(ids past the fleet) are registered but never produce.
"""

from __future__ import annotations

from datetime import date, timedelta

from devicepipe.registry import Branch, Device, MetricDefinition, Registry

# (time zone, home region): half-hour offsets (Kolkata; Adelaide, with DST too), northern and southern DST, and UTC.
ZONES = (
    ("Europe/London", "eu-west-1"),
    ("America/New_York", "us-east-1"),
    ("Asia/Kolkata", "eu-west-1"),
    ("Australia/Adelaide", "us-east-1"),
    ("America/Los_Angeles", "us-east-1"),
    ("UTC", "eu-west-1"),
)
# (kind, temp_c low, high): gauss(21, 2) leaves 17..25 about 5 % of the time, 18..24 about 13 %.
KINDS = (("climate", 17.0, 25.0), ("server-room", 18.0, 24.0))
INSTALLED = date(2025, 1, 6)


def branch_id(index: int) -> str:
    return f"branch-{index:03d}"


def device_id(index: int) -> str:
    return f"dev-{index:05d}"


def fleet_registry(devices: int, branches: int, unregistered: int = 2, silent: int = 2) -> Registry:
    """The registry for ``simulate(devices, branches)``: every branch, the fleet's devices but its last
    ``unregistered``, ``silent`` registered devices that never report, and each kind's metric definitions."""
    if not 0 <= unregistered <= devices or silent < 0:
        raise ValueError("unregistered must be within the fleet, silent not negative")
    return Registry(
        branches=tuple(
            Branch(
                branch_id(b),
                f"Branch {b:03d}",
                ZONES[b % len(ZONES)][1],
                ZONES[b % len(ZONES)][0],
                (f"{branch_id(b)}@example.com",),
            )
            for b in range(branches)
        ),
        devices=tuple(
            Device(
                device_id(d),
                branch_id(d % branches),
                kind,
                f"simulated {kind} sensor",
                installed_on=INSTALLED + timedelta(days=d % 90),
            )
            for d in [*range(devices - unregistered), *range(devices, devices + silent)]
            for kind in [KINDS[d // branches % len(KINDS)][0]]  # both kinds in every branch
        ),
        metrics=tuple(metric for kind, low, high in KINDS for metric in _metrics(kind, low, high)),
    )


def _metrics(kind: str, temp_low: float, temp_high: float) -> tuple[MetricDefinition, ...]:
    return (
        MetricDefinition(kind, "temp_c", "degC", temp_low, temp_high),
        MetricDefinition(kind, "humidity", "ratio", 0.32, 0.58),  # uniform(0.3, 0.6): about 13 % outside
        MetricDefinition(kind, "battery", "ratio", 0.25, 1.0),  # uniform(0.2, 1.0): about 6 % below
        MetricDefinition(kind, "door", ""),  # a string (open/closed): no range
    )
