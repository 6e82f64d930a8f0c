"""Partitioned ownership of the firing: several nodes, one database.

Plans hash into a fixed number of partitions (:mod:`.partitions`); a node
fires the plans of the partitions it holds a lease on (:mod:`.leases`),
and every write a firing makes is conditioned on the lease's epoch
(:class:`.base.FencedStore`); :mod:`.node` puts the engine on top (its
window per trusted partition, the check before each firing, hints) and
:mod:`.metrics` exports what happens. The interfaces are store-agnostic: a
driver that supports clusters implements :class:`.base.ClusterStore` and
:class:`.base.LeaseBackend` (the postgres driver does). See docs/CLUSTER.md.
"""
