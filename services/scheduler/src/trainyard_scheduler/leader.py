"""The scheduler's leader lease: the shared lease helper (trainyard_shared.leader) on key ``scheduler``."""

from trainyard_shared.leader import LEASE_KEY, SAFETY_MARGIN, LeaderLease, Lease, Listener

__all__ = ["LEASE_KEY", "SAFETY_MARGIN", "LeaderLease", "Lease", "Listener"]
