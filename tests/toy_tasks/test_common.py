"""Invariants every registered toy task must satisfy, and the registry."""

import importlib
import inspect
import pkgutil

import pytest
import torch

import toy_tasks
from toy_tasks import IGNORE_INDEX, NO_POSITION, Batch
from toy_tasks.base import check_float, check_int, random_permutations

NAMES = toy_tasks.names()


def sample(name: str, seed: int, batch_size: int = 8, device: str = "cpu") -> Batch:
    task = toy_tasks.get(name)
    return task.sample(batch_size, torch.Generator(device=device).manual_seed(seed))


def test_registry_holds_every_task_class_of_the_package():
    modules = [
        importlib.import_module(f"toy_tasks.{module.name}")
        for module in pkgutil.iter_modules(toy_tasks.__path__)
    ]
    defined = {
        cls
        for module in modules
        for cls in vars(module).values()
        if inspect.isclass(cls) and issubclass(cls, toy_tasks.ToyTask) and "name" in vars(cls)
    }
    assert {cls.name: cls for cls in defined} == {
        name: toy_tasks.task_class(name) for name in NAMES
    }
    assert len(NAMES) >= 4 and sorted(NAMES) == NAMES


def test_registry_describes_every_task():
    described = toy_tasks.describe()
    assert [name for name, _, _ in described] == NAMES
    for name, description, paper in described:
        cls = toy_tasks.task_class(name)
        assert description == cls.description and paper == cls.paper
        assert cls.relevance and cls.kind in ("tokens", "continuous", "classification")
        assert "``" not in description + paper + cls.relevance  # plain text, not reStructuredText


def test_registry_unknown_name_and_bad_keyword():
    with pytest.raises(ValueError, match=r"unknown toy task .nope.*assoc_recall"):
        toy_tasks.get("nope")
    with pytest.raises(ValueError, match=r"assoc_recall.*no parameter not_a_field; allowed: vocab"):
        toy_tasks.get("assoc_recall", not_a_field=3)


def test_registry_rejects_duplicates_and_undescribed_classes():
    with pytest.raises(ValueError, match="already registered"):
        toy_tasks.register_task(toy_tasks.task_class("assoc_recall"))
    with pytest.raises(TypeError, match="ToyTask subclass"):
        toy_tasks.register_task(int)

    class Undescribed(toy_tasks.task_class("assoc_recall")):
        paper = ""

    with pytest.raises(TypeError, match="paper"):
        toy_tasks.register_task(Undescribed)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_batch_different_seed_different(name):
    first, again, other = sample(name, 3), sample(name, 3), sample(name, 4)
    for field in ("inputs", "targets", "loss_mask", "relevant_positions"):
        assert torch.equal(getattr(first, field), getattr(again, field)), field
    for key, value in first.metadata.items():
        assert torch.equal(value, again.metadata[key]), key
    assert not torch.equal(first.inputs, other.inputs)


@pytest.mark.parametrize("name", NAMES)
def test_only_the_passed_generator_is_used(name):
    torch.manual_seed(0)
    state = torch.get_rng_state()
    sample(name, 0)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtypes_and_relevance_invariants(name):
    task = toy_tasks.get(name)
    batch = sample(name, 0)
    b, t = 8, task.seq_len
    assert batch.loss_mask.shape == (b, t) and batch.loss_mask.dtype == torch.bool
    assert batch.relevant_positions.shape[:2] == (b, t)
    assert batch.relevant_positions.dtype == torch.int64
    if task.kind in ("tokens", "classification"):
        assert batch.inputs.shape == (b, t) and batch.inputs.dtype == torch.int64
        assert batch.targets.shape == (b, t) and batch.targets.dtype == torch.int64
        assert batch.inputs.min() >= 0 and batch.inputs.max() < task.vocab_size
        assert torch.equal(batch.targets != IGNORE_INDEX, batch.loss_mask)
    if task.kind == "classification":  # one label per sequence, at the last position
        assert batch.loss_mask[:, -1].all() and batch.loss_mask.sum() == b
        labels = batch.targets[:, -1]
        assert labels.min() >= 0 and labels.max() < task.n_classes
    if task.kind == "continuous":
        assert batch.inputs.shape == (b, t, task.d_input) and batch.inputs.dtype == torch.float32
        assert batch.targets.shape == (b, t, task.d_output)
        assert batch.targets.dtype == torch.float32
    has_relevant = (batch.relevant_positions != NO_POSITION).any(-1)
    assert torch.equal(has_relevant, batch.loss_mask), "relevance exactly at scored predictions"
    # Causal: a prediction at position i only needs inputs at positions <= i.
    query = torch.arange(t).view(1, t, 1)
    relevant = batch.relevant_positions
    assert ((relevant == NO_POSITION) | ((relevant >= 0) & (relevant <= query))).all()


@pytest.mark.parametrize("name", NAMES)
def test_relevance_mask_matches_positions(name):
    batch = sample(name, 1, batch_size=4)
    mask = batch.relevance_mask()
    expected = torch.zeros_like(mask)
    for b, i, slot in (batch.relevant_positions != NO_POSITION).nonzero().tolist():
        expected[b, i, batch.relevant_positions[b, i, slot]] = True
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("name", NAMES)
def test_render_names_scored_positions(name):
    task = toy_tasks.get(name)
    text = task.render(sample(name, 0, batch_size=2), index=1)
    assert isinstance(text, str) and len(text.splitlines()) >= 3


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trips_through_dict(name):
    task = toy_tasks.get(name)
    data = task.to_dict()
    assert data.pop("name") == name
    assert toy_tasks.get(name, **data) == task


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_samples_on_cuda(name):
    batch = sample(name, 0, device="cuda")
    assert batch.inputs.is_cuda and batch.relevant_positions.is_cuda
    assert batch.to("cpu").inputs.device.type == "cpu"


def test_checks_name_the_parameter_and_range():
    with pytest.raises(ValueError, match=r"n_pairs must be in \[1, 10\], got 11"):
        check_int("n_pairs", 11, 1, 10)
    with pytest.raises(ValueError, match="n_pairs must be an integer"):
        check_int("n_pairs", 2.5, 1)
    with pytest.raises(ValueError, match=r"noise must be in \[0, inf\]"):
        check_float("noise", -0.1, 0)
    with pytest.raises(ValueError, match="noise must be a finite number"):
        check_float("noise", float("nan"), 0)


def test_random_permutations_are_permutations():
    perms = random_permutations(16, 9, torch.Generator().manual_seed(0))
    assert torch.equal(perms.sort(dim=1).values, torch.arange(9).expand(16, 9))


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
            ],
        ),
    ],
)
def test_non_blocking_move_copies_every_tensor(device: str) -> None:
    batch = sample("linear_regression", 3)
    moved = batch.to(device, non_blocking=True)
    pairs = [(batch.inputs, moved.inputs), (batch.targets, moved.targets)]
    pairs += [(batch.loss_mask, moved.loss_mask), (batch.metadata["w"], moved.metadata["w"])]
    for original, copy in pairs:
        assert copy.device.type == device
        assert torch.equal(copy.cpu(), original)


def test_take_indexes_every_batch_tensor():
    batch = sample("linear_regression", 4)
    indices = torch.tensor([5, 0, 5])
    taken = batch.take(indices)
    assert taken.batch_size == 3
    for name in ("inputs", "targets", "loss_mask", "relevant_positions"):
        assert torch.equal(getattr(taken, name), getattr(batch, name)[indices])
    assert torch.equal(taken.metadata["w"], batch.metadata["w"][indices])


def test_head_is_the_first_examples_or_all_of_them():
    batch = sample("linear_regression", 4)  # 8 examples
    first = batch.head(3)
    assert torch.equal(first.inputs, batch.inputs[:3])
    assert torch.equal(first.metadata["w"], batch.metadata["w"][:3])
    assert torch.equal(batch.head(100).inputs, batch.inputs)
    for count in (0, -1, 2.5, True):
        with pytest.raises((ValueError, TypeError), match="count"):
            batch.head(count)


def test_split_chunks_concatenate_back_to_the_batch():
    batch = sample("linear_regression", 0, batch_size=7)
    chunks = batch.split(3)
    assert [chunk.batch_size for chunk in chunks] == [3, 3, 1]
    for name in ("inputs", "targets", "loss_mask", "relevant_positions"):
        joined = torch.cat([getattr(chunk, name) for chunk in chunks])
        assert torch.equal(joined, getattr(batch, name))
    assert torch.equal(torch.cat([chunk.metadata["w"] for chunk in chunks]), batch.metadata["w"])
    with pytest.raises(ValueError, match="size"):
        batch.split(0)
