"""Harvesting hook_z: against TransformerLens's cache (dense and under `sparsify`), the
TransformerBridge's hook and MiniLM's own attention output; the activation store on disk and in
memory."""

from __future__ import annotations

import functools

import pytest
import torch

import toy_tasks
import workbench.sparse
from workbench.bridge import hooked_to_bridge_state_dict
from workbench.capture import SparsePlan
from workbench.models import ModelConfig, build_model
from workbench.sae import ActivationStore, TaskSource, harvest
from workbench.sparse.patch import sparsify

TASK = toy_tasks.get("assoc_recall", vocab_size=32, n_pairs=4, seq_len=16)
CONFIG = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, attn_only=True, seed=3)


@functools.cache
def hooked() -> torch.nn.Module:
    return build_model(TASK, CONFIG).eval()


def cached_rows(model: torch.nn.Module, source: TaskSource, layer: int) -> torch.Tensor:
    """TransformerLens's ``blocks.<layer>.attn.hook_z`` ``[batch, pos, heads, d_head]`` at the
    kept positions, batch after batch, in (example, position) order."""
    rows = []
    for inputs, keep in source.batches():
        _, cache = model.run_with_cache(inputs, names_filter=f"blocks.{layer}.attn.hook_z")
        rows.append(cache[f"blocks.{layer}.attn.hook_z"][keep])
    return torch.cat(rows)


@pytest.mark.parametrize("positions", ["scored", "all"])
@pytest.mark.parametrize("layer", [0, 1])
def test_harvest_equals_transformer_lens_cache(layer: int, positions: str) -> None:
    source = TaskSource(TASK, 40, batch_size=16, seed=5, positions=positions)
    store = harvest(hooked(), source.batches(), layer)
    rows, origins = store.tensors()
    expected = cached_rows(hooked(), source, layer)
    assert rows.shape == expected.shape == (len(store), CONFIG.n_heads, CONFIG.d_head)
    torch.testing.assert_close(rows, expected, atol=1e-6, rtol=1e-5)
    # origins: global example index and position, in the order of the rows
    keep = torch.cat([keep for _, keep in source.batches()])
    assert torch.equal(origins, keep.nonzero())


def test_harvest_under_a_sparse_method_equals_the_cache_under_sparsify() -> None:
    method = workbench.sparse.get("top_k", k=3)
    source = TaskSource(TASK, 24, batch_size=8, seed=1)
    store = harvest(
        hooked(), source.batches(), 1, sparse=SparsePlan(method, layers=(1,), block_size=16)
    )
    with sparsify(hooked(), method, layers=[1], block_size=16, record=False):
        expected = cached_rows(hooked(), source, 1)
    dense = cached_rows(hooked(), source, 1)
    rows, _ = store.tensors()
    torch.testing.assert_close(rows, expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(rows, dense, atol=1e-3)  # the method changed what was harvested


def test_harvest_from_a_transformer_bridge_equals_its_hook() -> None:
    bridge = build_model(TASK, CONFIG.replace(backend="bridge")).eval()
    bridge.load_state_dict(hooked_to_bridge_state_dict(hooked()), strict=True)
    source = TaskSource(TASK, 8, batch_size=8, seed=2)
    rows, _ = harvest(bridge, source.batches(), 1).tensors()
    seen = []
    hook = ("blocks.1.attn.hook_z", lambda z, hook: seen.append(z.detach()))
    ((inputs, keep),) = source.batches()
    with torch.no_grad(), bridge.hooks(fwd_hooks=[hook]):
        bridge(inputs)
    expected = seen[0].reshape(*keep.shape, CONFIG.n_heads, CONFIG.d_head)[keep]
    torch.testing.assert_close(rows, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rows, cached_rows(hooked(), source, 1), atol=1e-5, rtol=1e-4)


def test_harvest_from_minilm_equals_the_input_of_its_output_projection(tmp_path) -> None:
    from workbench.models import minilm
    from workbench.sae import TextSource

    model, tokenizer = minilm()
    text = tmp_path / "text.txt"
    text.write_text("Attention heads read a few tokens. " * 30, encoding="utf-8")
    source = TextSource(text, tokenizer, window=48, batch_size=2)
    assert len(source.windows) >= 3 and len(source.windows[-1]) < 48  # a padded last batch
    store = harvest(model, source.batches(), 2)
    projection_inputs = []
    dense = model.encoder.layer[2].attention.output.dense
    handle = dense.register_forward_hook(
        lambda module, args, out: projection_inputs.append(args[0])
    )
    try:
        with torch.no_grad():
            for inputs, _ in source.batches():
                model(**inputs)
    finally:
        handle.remove()
    keeps = [keep for _, keep in source.batches()]
    expected = torch.cat([z[keep] for z, keep in zip(projection_inputs, keeps, strict=True)])
    rows, _ = store.tensors()
    assert len(store) == source.n_rows() == sum(len(window) for window in source.windows)
    torch.testing.assert_close(rows.flatten(1), expected, atol=1e-5, rtol=1e-4)


def test_store_on_disk_holds_the_same_rows_in_chunks_and_loads_back(tmp_path) -> None:
    source = TaskSource(TASK, 64, batch_size=16, seed=4, positions="all")
    in_memory = harvest(hooked(), source.batches(), 0)
    on_disk = harvest(hooked(), source.batches(), 0, folder=tmp_path / "store", info={"a": 1})
    on_disk_chunks = ActivationStore(on_disk.shape, tmp_path / "small", chunk_rows=100)
    rows, origins = in_memory.tensors()
    for start in range(0, len(rows), 70):
        on_disk_chunks.add(rows[start : start + 70], origins[start : start + 70])
    on_disk_chunks.save()
    assert len(list((tmp_path / "small").glob("chunk-*.safetensors"))) == 8  # 1024 rows / 140
    for store in (on_disk, ActivationStore.load(tmp_path / "store"), on_disk_chunks):
        loaded_rows, loaded_origins = store.tensors()
        assert torch.equal(loaded_rows, rows) and torch.equal(loaded_origins, origins)
    assert ActivationStore.load(tmp_path / "store").info == {"a": 1}
    with pytest.raises(FileExistsError, match="already holds"):
        harvest(hooked(), source.batches(), 0, folder=tmp_path / "store")


@pytest.mark.parametrize("chunk_rows", [None, 100])
def test_batches_visit_every_row_once_per_pass_shuffled(tmp_path, chunk_rows) -> None:
    rows = torch.arange(1000, dtype=torch.float32)[:, None, None].expand(1000, 1, 2).clone()
    origins = torch.stack([torch.arange(1000), torch.zeros(1000, dtype=torch.int64)], 1)
    folder = None if chunk_rows is None else tmp_path
    store = ActivationStore((1, 2), folder, chunk_rows=chunk_rows or 65536)
    store.add(rows, origins)
    batches = store.batches(100, torch.Generator().manual_seed(0), mix_chunks=3)
    first_pass = torch.cat([next(batches) for _ in range(10)])
    assert first_pass.shape == (1000, 2)
    assert torch.equal(first_pass[:, 0].sort().values, torch.arange(1000.0))
    assert not torch.equal(first_pass[:, 0], torch.arange(1000.0))
    with pytest.raises(ValueError, match="batch_size 2000 exceeds the 1000 rows"):
        next(store.batches(2000, torch.Generator()))


def test_task_source_draws_any_example_again() -> None:
    source = TaskSource(TASK, 50, batch_size=16, seed=7)
    everything = torch.cat([inputs for inputs, _ in source.batches()])
    picked = torch.tensor([49, 0, 17, 16, 33])
    assert torch.equal(source.examples(picked).inputs, everything[picked])
    assert source.n_rows() == 50 * TASK.n_pairs
    assert source.tokens(3)[:2] == [TASK.token_name(t) for t in everything[3, :2].tolist()]
