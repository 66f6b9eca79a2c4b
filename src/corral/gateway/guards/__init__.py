"""The gateway's guards, one concern per module, applied in DESIGN.md's order by
``corral.gateway.chain``."""
