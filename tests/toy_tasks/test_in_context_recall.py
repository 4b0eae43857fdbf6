"""Zucchet et al.'s in-context associative recall (`toy_tasks.InContextRecall`)."""

from __future__ import annotations

import pytest
import torch

from toy_tasks import IGNORE_INDEX, InContextRecall


def sample(task: InContextRecall, batch_size: int = 64, seed: int = 0):
    return task.sample(batch_size, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("burstiness", [1, 3])
def test_context_query_target_and_relevance(burstiness: int) -> None:
    task = InContextRecall(n_tokens=16, n_pairs=5, burstiness=burstiness)
    batch = sample(task)
    assert task.seq_len == 11 and batch.inputs.shape == (64, 11)
    keys, values = batch.inputs[:, 0:10:2], batch.inputs[:, 1:10:2]
    query = batch.inputs[:, 10]
    assert torch.equal(keys, batch.metadata["keys"]) and torch.equal(query, batch.metadata["query"])
    assert ((keys == query[:, None]).sum(dim=1) == burstiness).all()
    for row in range(64):  # distinct keys besides the copies; one value per key
        distinct = set(keys[row].tolist())
        assert len(distinct) == 5 - burstiness + 1
        mapping = {}
        for key, value in zip(keys[row].tolist(), values[row].tolist(), strict=True):
            assert mapping.setdefault(key, value) == value
    target = batch.targets[:, 10]
    assert (batch.targets[:, :10] == IGNORE_INDEX).all() and batch.loss_mask[:, 10].all()
    relevant = batch.relevant_positions[:, 10]  # [batch, B]: the copies of the value
    assert relevant.shape == (64, burstiness)
    assert (batch.inputs.gather(1, relevant) == target[:, None]).all()
    assert (batch.inputs.gather(1, relevant - 1) == query[:, None]).all()


def test_maps_are_fresh_per_sequence() -> None:
    batch = sample(InContextRecall(n_tokens=8, n_pairs=8), batch_size=256)
    key_zero = batch.metadata["keys"] == 0
    values_of_zero = set(batch.metadata["values"][key_zero].tolist())
    assert len(values_of_zero) == 8  # token 0 maps to every token somewhere


def test_cross_sample_repetition_uses_the_special_pair() -> None:
    task = InContextRecall(n_tokens=8, n_pairs=6, cross_sample_p=1.0, task_seed=3)
    key, value = task.special_pair()
    batch = sample(task, batch_size=128)
    assert batch.metadata["special"].all()
    assert (batch.inputs[:, -1] == key).all() and (batch.targets[:, -1] == value).all()
    keys = batch.metadata["keys"]
    assert ((keys == key).sum(dim=1) == 1).all()  # k* once, other keys distinct
    assert all(len(set(row)) == 6 for row in keys.tolist())
    mixed = sample(task.replace(cross_sample_p=0.5), batch_size=2000)
    assert 0.45 < mixed.metadata["special"].float().mean() < 0.55


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"n_tokens": 1}, "n_tokens"),
        ({"n_tokens": 4, "n_pairs": 5}, "n_pairs"),
        ({"burstiness": 9}, "burstiness"),
        ({"cross_sample_p": 1.5}, "cross_sample_p"),
    ],
)
def test_bad_parameters_name_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        InContextRecall(**changes)
    assert InContextRecall(n_tokens=4, n_pairs=5, burstiness=2).distinct_keys == 4
