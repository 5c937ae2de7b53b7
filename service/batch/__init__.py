"""Batch files (SPEC §9): inbound import, outbound export, the scheduled worker."""
