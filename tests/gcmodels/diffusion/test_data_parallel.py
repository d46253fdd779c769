"""Data-parallel training (`train_diffusion(group=...)`) on the CPU with two gloo processes: the
loss history and weights of two processes are those of one process with the same global batch
(up to float summation order), both processes hold the same model, and a checkpoint state of two
processes resumes in one and one of one process in two, to the uninterrupted run's model."""

from __future__ import annotations

import pytest
import torch
from ddp_cases import case, rank_trains, tiny_model, train
from ddp_failing import rank_fails

from gcmine.tasks.infra.distributed import RankFailed, process_group
from gcmodels.diffusion.training import _rows

STEPS, HALF = 8, 4
CPU2 = [torch.device("cpu")] * 2


def _close(a: dict, b: dict, atol: float = 1e-4) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-4, msg=k)


def _losses(result) -> list[float]:
    return [r["loss"] for r in result.history]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process's runs of both cases (and its state at step HALF), then one group of two
    processes running, in order: both cases from the start (rank 0 keeps the buckets case's state
    at step HALF) and the buckets case resumed from one process's state at step HALF."""
    tmp = tmp_path_factory.mktemp("ddp")
    one: dict = {}
    for kind in ("uint8", "buckets"):
        states: list[dict] = []
        one[kind] = train(kind, STEPS, on_checkpoint=states.append)
        one[f"{kind}-state"] = next(s for s in states if s["step"] == HALF)
    torch.save(one["buckets-state"], tmp / "one-state.pt")
    jobs = [
        ("uint8", STEPS, None, str(tmp / "rank1-uint8.pt")),
        ("buckets", STEPS, None, str(tmp / "rank1-buckets.pt")),
        ("buckets", STEPS, str(tmp / "one-state.pt"), str(tmp / "rank1-resumed.pt")),
    ]
    two: dict = {}
    with process_group(CPU2, rank_trains, (jobs,)) as group:
        assert torch.distributed.get_world_size(group) == 2 and torch.distributed.get_rank(group) == 0
        two["uint8"] = train("uint8", STEPS, group=group)
        states = []
        two["buckets"] = train("buckets", STEPS, group=group, on_checkpoint=states.append)
        two["buckets-state"] = next(s for s in states if s["step"] == HALF)
        two["resumed"] = train("buckets", STEPS, group=group, resume=one["buckets-state"])
    assert not torch.distributed.is_initialized()  # the group is gone with the block
    rank1 = {name: torch.load(tmp / f"rank1-{name}.pt", weights_only=True) for name in ("uint8", "buckets", "resumed")}
    return one, two, rank1


@pytest.mark.parametrize("kind", ["uint8", "buckets"])
def test_two_processes_train_as_one_with_the_same_global_batch(runs, kind: str) -> None:
    one, two, rank1 = runs
    (m1, r1), (m2, r2) = one[kind], two[kind]
    assert r2.steps == STEPS and [r["step"] for r in r2.history] == list(range(STEPS))
    assert _losses(r2) == pytest.approx(_losses(r1), rel=1e-5, abs=1e-6)
    assert [r["lr"] for r in r2.history] == [r["lr"] for r in r1.history]
    _close(m2.state_dict(), m1.state_dict())
    # the second process holds exactly rank 0's model and history (nothing is ever broadcast)
    assert all(torch.equal(rank1[kind]["weights"][k], v) for k, v in m2.state_dict().items())
    assert _losses(r2) == [r["loss"] for r in rank1[kind]["history"]]


def test_the_state_of_two_processes_is_that_of_one_and_resumes_in_one(runs) -> None:
    one, two, _ = runs
    state2, state1 = two["buckets-state"], one["buckets-state"]
    assert torch.equal(state2["generator"], state1["generator"])  # the same draws from here on
    assert state2["data"]["pos"] == state1["data"]["pos"]
    assert all(torch.equal(a, b) for a, b in zip(state2["data"]["orders"], state1["data"]["orders"]))
    assert state2["signature"] == state1["signature"]
    _close(state2["weights"], state1["weights"])
    resumed, result = train("buckets", STEPS, resume=state2)  # one process from the two processes' state
    assert result.resumed_from == HALF and result.steps == STEPS
    assert _losses(result) == pytest.approx(_losses(one["buckets"][1]), rel=1e-5, abs=1e-6)
    _close(resumed.state_dict(), one["buckets"][0].state_dict())


def test_the_state_of_one_process_resumes_in_two(runs) -> None:
    one, two, rank1 = runs
    model, result = two["resumed"]
    assert result.resumed_from == HALF and [r["step"] for r in result.history[HALF:]] == list(range(HALF, STEPS))
    assert _losses(result) == pytest.approx(_losses(one["buckets"][1]), rel=1e-5, abs=1e-6)
    _close(model.state_dict(), one["buckets"][0].state_dict())
    assert all(torch.equal(rank1["resumed"]["weights"][k], v) for k, v in model.state_dict().items())


def test_a_slice_of_the_batch_draws_the_whole_batch() -> None:
    """`training_loss(part=...)`: the slices' losses are those rows of the whole batch's loss and
    every slice leaves the generator where the whole batch does (empty slices included)."""
    model = tiny_model()
    images, cond, _ = case("uint8")
    x0 = model.encode(images[:5])
    whole_gen = torch.Generator().manual_seed(7)
    whole = model.training_loss(x0, cond[:5], generator=whole_gen)
    parts = []
    for start, stop in [(0, 3), (3, 5), (5, 5)]:
        g = torch.Generator().manual_seed(7)
        parts.append(model.training_loss(x0[start:stop], cond[start:stop], generator=g, part=(start, 5)))
        assert torch.equal(g.get_state(), whole_gen.get_state())
    torch.testing.assert_close(torch.cat(parts), whole)
    with pytest.raises(ValueError, match="part"):
        model.training_loss(x0[:3], cond[:3], part=(4, 5))


def test_rows_split_a_batch_in_rank_order(monkeypatch) -> None:
    import torch.distributed as dist

    def rows(total: int, world: int) -> list[tuple[int, int]]:
        monkeypatch.setattr(dist, "get_world_size", lambda group: world)
        out = []
        for rank in range(world):
            monkeypatch.setattr(dist, "get_rank", lambda group, r=rank: r)
            out.append(_rows(total, None))
        return out

    assert rows(8, 2) == [(0, 4), (4, 8)]
    assert rows(5, 2) == [(0, 3), (3, 5)]
    assert rows(1, 2) == [(0, 1), (1, 1)]  # a batch smaller than the group leaves a slice empty


def test_a_failing_rank_is_reported_with_its_error() -> None:
    with pytest.raises(RankFailed, match="could not build its model"):
        with process_group(CPU2, rank_fails) as group:
            train("uint8", STEPS, group=group)  # waits in its first gradient sum for the failed rank
    assert not torch.distributed.is_initialized()
