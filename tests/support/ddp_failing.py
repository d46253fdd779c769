"""A spawned data-parallel rank that fails before its first step, in a module that imports nothing:
the spawned process loads only what `gcmine.tasks.infra.distributed` needs (torch) to run it, not the
diffusion models of ddp_cases (about 7 s more of imports on 2 busy cores)."""

from __future__ import annotations


def rank_fails(group, device) -> None:
    """A spawned rank that fails before its first step."""
    raise ValueError("rank 1 could not build its model")
