"""Partitioned ownership of the firing: several nodes, one database.

Plans hash into a fixed number of partitions (:mod:`.partitions`); a node
fires the plans of the partitions it holds a lease on (:mod:`.leases`),
and every write a firing makes is conditioned on the lease's epoch
(:class:`.base.FencedStore`). The interfaces here are store-agnostic; a
driver that supports clusters implements :class:`.base.LeaseBackend` and
:class:`.base.FencedStore` (the postgres driver does).
"""
