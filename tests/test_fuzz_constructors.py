"""Property tests of every public constructor and config: toy tasks, `Layout`, every registered
sparse method, `TraceConfig`, `ModelConfig`, `TrainConfig`, experiment specs, `SAEConfig` and
`TaskSource`. Any input either
works end to end (sample / select + attend / trace / build + forward / train, finite outputs) or
raises ``ValueError`` or ``TypeError`` whose message names a parameter; nothing else escapes.

Inputs mix valid values, boundaries and wrong types (strings, floats for ints, bools, None,
containers, nan, +-inf, huge ints) on a few fields at a time. The examples are derandomized (the
same in every run) and bounded in time: a deadline per example, and an alarm that turns a hang
into a failure. Sizes stay tiny; a valid config too large to run here (sizes are the user's to
choose) is only constructed. `test_bad_input` holds one plain regression test per cause found.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import signal
import tempfile
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import toy_tasks
import workbench.sparse
from kernels import api
from kernels.layout import MAX_BLOCK, MAX_LEN, Layout, num_blocks
from workbench.emergence_toy import REPEAT_LOGITS, EmergenceToyConfig
from workbench.experiments.spec import ExperimentSpec, config_hash
from workbench.models import ACT_FNS, ModelConfig, build_model
from workbench.sae import ActivationStore, SAEConfig, TaskSource, train_sae
from workbench.sae.config import ARCHITECTURES
from workbench.sparse.corrections import Rettention
from workbench.trace import TraceConfig, trace
from workbench.train import TrainConfig, train
from workbench.train.config import MAX_SEED, OPTIMIZERS, SCHEDULES

FUZZ = settings(
    max_examples=30,
    deadline=timedelta(seconds=5),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HANG_SECONDS = 30
"""An example still running after this long is a hang (the alarm fails it even if it never
returns to the deadline check)."""

JUNK_VALUES = [
    *(None, "", "3", "yes", [], [1], {}, {"a": 1}, (), object()),
    *(math.nan, math.inf, -math.inf, True, False, -1, 0, 2.5, -0.5, 1e300),
    *(MAX_LEN + 1, 2**63, 2**64, 10**400),
]
junk = st.sampled_from(JUNK_VALUES)
"""Wrong types and extreme values for any field (a few of them valid for some fields)."""
hashable_junk = st.sampled_from([None, "", 1, 2.5, True, ("a",), math.nan])


def mostly(
    valid: st.SearchStrategy[Any], bad: st.SearchStrategy[Any] = junk
) -> st.SearchStrategy[Any]:
    """``valid`` four times in five, else ``bad``: with several arguments per example, most
    examples still run end to end."""
    return st.sampled_from([True] * 4 + [False]).flatmap(lambda ok: valid if ok else bad)


# ---------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``TimeoutError`` in the block after ``seconds`` (SIGALRM; main thread only)."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def built(build: Callable[[], Any], names: Iterable[str]) -> Any:
    """``build()``, or None when it raised ``ValueError`` / ``TypeError`` whose message names one
    of ``names`` (as a word); any other outcome fails the test."""
    try:
        with time_limit(HANG_SECONDS):
            return build()
    except (ValueError, TypeError) as error:
        message = str(error)
        named = [name for name in names if re.search(rf"(?<!\w){re.escape(name)}(?!\w)", message)]
        assert named, f"{type(error).__name__} names no parameter of {sorted(names)}: {message}"
        return None


def field_names(cls: type) -> list[str]:
    return [field.name for field in dataclasses.fields(cls)]


def union_members(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def values_for(hint: Any, default: Any) -> st.SearchStrategy[Any]:
    """Values for a field annotated ``hint`` whose default is ``default``: valid values of each
    member type (near the default for numbers), and junk."""
    options: list[st.SearchStrategy[Any]] = []
    for member in union_members(hint):
        origin = typing.get_origin(member)
        if member is type(None):
            options.append(st.none())
        elif origin is typing.Literal:
            options.append(st.sampled_from(typing.get_args(member)))
        elif member is bool:
            options.append(st.booleans())
        elif member is int:
            number = default if type(default) is int else 8
            options.append(st.integers(-2, 2 * number + 4))
        elif member is float:
            number = default if type(default) is float else 1.0
            options.append(st.floats(-0.1, 2 * number + 0.5, allow_nan=False))
        elif member is str and isinstance(default, str):
            options.append(st.just(default))
    return mostly(st.one_of(options)) if options else junk


def hinted(cls: type) -> dict[str, st.SearchStrategy[Any]]:
    """`values_for` every field of the dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    strategies = {}
    for field in dataclasses.fields(cls):
        default = field.default
        if default is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        strategies[field.name] = values_for(hints[field.name], default)
    return strategies


@st.composite
def changes(
    draw: st.DrawFn, strategies: dict[str, st.SearchStrategy[Any]], most: int = 3
) -> dict[str, Any]:
    """Keyword arguments for up to ``most`` of the fields of ``strategies`` (the rest default)."""
    chosen = draw(st.lists(st.sampled_from(sorted(strategies)), max_size=most, unique=True))
    return {name: draw(strategies[name]) for name in chosen}


def assert_finite(*values: Any) -> None:
    """Every floating-point tensor among ``values`` is finite (other values are skipped)."""
    for value in values:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert torch.isfinite(value).all(), value


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------- toy tasks
def small_task(task: toy_tasks.ToyTask) -> bool:
    """Cheap enough to sample here (seeds do not count)."""
    sizes = [
        value
        for name, value in dataclasses.asdict(task).items()
        if type(value) is int and "seed" not in name
    ]
    return task.seq_len <= 512 and all(size <= 4096 for size in sizes)


@pytest.mark.parametrize("name", toy_tasks.names())
@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_toy_task_samples_or_names_the_parameter(name: str, data: st.DataObject) -> None:
    cls = toy_tasks.task_class(name)
    kwargs = data.draw(changes(hinted(cls)))
    task = built(lambda: cls(**kwargs), field_names(cls))
    if task is None or not small_task(task):
        event("refused" if task is None else "too large to run here")
        return
    batch_size = data.draw(mostly(st.integers(1, 3), st.one_of(st.integers(-1, 0), junk)))
    if type(batch_size) is int and batch_size > 64:
        return  # valid, and as costly as it is large
    batch = built(lambda: task.sample(batch_size, generator()), ["batch_size"])
    if batch is None:
        return
    assert batch.inputs.shape[:2] == batch.loss_mask.shape == (batch_size, task.seq_len)
    assert_finite(batch.inputs, batch.targets, *batch.metadata.values())
    positions = batch.relevant_positions
    assert ((positions >= -1) & (positions < task.seq_len)).all()
    assert task.render(batch)
    assert cls(**{k: v for k, v in task.to_dict().items() if k != "name"}) == task
    event("ran end to end")


# ---------------------------------------------------------------------------- layouts
lengths = mostly(st.integers(1, 70), st.one_of(st.integers(-2, 0), junk))
blocks = mostly(st.sampled_from([16, 32, 64, MAX_BLOCK]), st.one_of(st.integers(-2, 40), junk))
flags = mostly(st.booleans())
LAYOUT_NAMES = [
    *("q_len", "kv_len", "block_q", "block_k", "causal", "keep_token_mask"),
    *("block_mask", "token_mask", "row_threshold", "scores", "threshold"),
    *("kv_indices", "kv_counts"),
]


def usable(length: Any) -> int:
    """``length`` if it is a small valid length, else 3 (to shape tensors around bad lengths)."""
    return length if type(length) is int and 1 <= length <= 70 else 3


@st.composite
def tensors(draw: st.DrawFn, shape: tuple[int, ...], dtype: torch.dtype) -> Any:
    """Mostly a tensor of ``shape`` and ``dtype`` (random values, batch and heads 1 or 2), else
    one of the wrong shape, the wrong dtype, or junk."""
    kind = draw(st.sampled_from(["right"] * 12 + ["shape", "dtype", "junk"]))
    if kind == "junk":
        return draw(junk)
    lead = draw(st.sampled_from([(1, 1), (1, 1), (1, 2), (2, 1), (2, 2)]))
    full = (*lead, *shape) if kind != "shape" else (*lead, shape[0] + 1, *shape[1:])
    values = torch.randn(full, generator=generator(draw(st.integers(0, 3))))
    if dtype == torch.bool:
        values = values > draw(st.sampled_from([-9.0, 0.0, 9.0]))
    return values.to(torch.int64 if kind == "dtype" else dtype)


def check_layout(layout: Layout, scores: torch.Tensor | None = None) -> None:
    """The layout's views and the reference attention through it work, with finite outputs."""
    if layout.row_threshold is not None and scores is None:
        scores = torch.randn(layout.batch, layout.heads, layout.q_len, layout.kv_len)
    dense = layout.to_dense(scores)
    assert dense.shape[2:] == (layout.q_len, layout.kv_len)
    assert 0.0 <= layout.block_density() <= 1.0
    q = torch.randn(layout.batch, layout.heads, layout.q_len, 8, generator=generator(1))
    k, v = (torch.randn(layout.batch, 1, layout.kv_len, 8, generator=generator(s)) for s in (2, 3))
    assert_finite(api.sparse_attention(q, k, v, layout, impl="reference"))
    repr(layout)
    event("ran end to end")


@settings(FUZZ, max_examples=40)
@given(q_len=lengths, kv_len=lengths, block_q=blocks, block_k=blocks, causal=flags)
def test_layout_dense(q_len, kv_len, block_q, block_k, causal) -> None:
    layout = built(
        lambda: Layout.dense(q_len, kv_len, block_q=block_q, block_k=block_k, causal=causal),
        LAYOUT_NAMES,
    )
    if layout is not None:
        check_layout(layout)


@settings(FUZZ, max_examples=40)
@given(data=st.data(), block_q=blocks, block_k=blocks, causal=flags, keep=flags)
def test_layout_from_token_mask(data, block_q, block_k, causal, keep) -> None:
    mask = data.draw(tensors((usable(data.draw(lengths)), usable(data.draw(lengths))), torch.bool))
    layout = built(
        lambda: Layout.from_token_mask(
            mask, block_q=block_q, block_k=block_k, causal=causal, keep_token_mask=keep
        ),
        LAYOUT_NAMES,
    )
    if layout is not None:
        check_layout(layout)


@settings(FUZZ, max_examples=40)
@given(data=st.data(), q_len=lengths, kv_len=lengths, block_q=blocks, block_k=blocks, causal=flags)
def test_layout_from_block_mask(data, q_len, kv_len, block_q, block_k, causal) -> None:
    sizes = [usable(b) if type(b) is int and b >= 16 else 16 for b in (block_q, block_k)]
    grid = (num_blocks(usable(q_len), sizes[0]), num_blocks(usable(kv_len), sizes[1]))
    block_mask = data.draw(tensors(grid, torch.bool))
    extras = {
        "token_mask": st.one_of(tensors((usable(q_len), usable(kv_len)), torch.bool), junk),
        "row_threshold": st.one_of(tensors((usable(q_len),), torch.float32), junk),
    }
    fields = data.draw(changes(extras, most=2))
    layout = built(
        lambda: Layout.from_block_mask(
            block_mask, q_len, kv_len, block_q=block_q, block_k=block_k, causal=causal, **fields
        ),
        LAYOUT_NAMES,
    )
    if layout is not None:
        check_layout(layout)


@settings(FUZZ, max_examples=40)
@given(data=st.data(), block_q=blocks, block_k=blocks, causal=flags)
def test_layout_from_row_threshold(data, block_q, block_k, causal) -> None:
    q_len, kv_len = usable(data.draw(lengths)), usable(data.draw(lengths))
    scores = data.draw(tensors((q_len, kv_len), torch.float32))
    threshold = data.draw(tensors((q_len,), torch.float32))
    layout = built(
        lambda: Layout.from_row_threshold(
            scores, threshold, block_q=block_q, block_k=block_k, causal=causal
        ),
        LAYOUT_NAMES,
    )
    if layout is not None:
        check_layout(layout, scores.expand(*layout.kv_counts.shape[:2], -1, -1))


KINDS_OF_BROKEN_INDICES = ["dtype", "shape", "range", "order", "junk"]


@settings(FUZZ, max_examples=40)
@given(data=st.data(), q_len=lengths, kv_len=lengths, block_q=blocks, block_k=blocks, causal=flags)
def test_layout_init(data, q_len, kv_len, block_q, block_k, causal) -> None:
    mask = torch.rand(1, 1, usable(q_len), usable(kv_len), generator=generator()) < 0.5
    sizes = [b if b in (16, 32, 64, MAX_BLOCK) else 16 for b in (block_q, block_k)]
    base = Layout.from_token_mask(mask, block_q=sizes[0], block_k=sizes[1])
    indices, counts = base.kv_indices, base.kv_counts
    broken = data.draw(mostly(st.just("none"), st.sampled_from(KINDS_OF_BROKEN_INDICES)))
    if broken == "dtype":
        indices = indices.long()
    elif broken == "shape":
        counts = counts[..., :-1]
    elif broken == "range":
        counts = counts + indices.shape[-1] + 1
    elif broken == "order":
        indices = indices.flip(-1)
    elif broken == "junk":
        indices = data.draw(junk)
    layout = built(
        lambda: Layout(
            indices, counts, q_len, kv_len, block_q=block_q, block_k=block_k, causal=causal
        ),
        LAYOUT_NAMES,
    )
    if layout is not None:
        check_layout(layout)


# ---------------------------------------------------------------------------- sparse methods
def method_strategies(name: str) -> dict[str, st.SearchStrategy[Any]]:
    strategies = hinted(workbench.sparse.get(name).__class__)
    for field, strategy in list(strategies.items()):
        if field == "base":
            strategies[field] = st.one_of(
                st.sampled_from(workbench.sparse.names()),
                st.sampled_from(["top_k", "sink_window", "quest"]).map(workbench.sparse.get),
                junk,
            )
        elif field != "stats":
            strategies[field] = st.one_of(strategy, st.just(MAX_LEN))
    return strategies


@pytest.mark.parametrize("name", workbench.sparse.names())
@settings(FUZZ, max_examples=25)
@given(
    data=st.data(),
    shape=st.sampled_from([(40, 40), (24, 40), (1, 33), (17, 17)]),
    block_size=st.sampled_from([16, 32]),
)
def test_sparse_method_selects_and_attends(name, data, shape, block_size) -> None:
    kwargs = data.draw(changes(method_strategies(name)))
    fields = field_names(type(workbench.sparse.get(name)))
    method = built(lambda: workbench.sparse.get(name, **kwargs), fields)
    if method is None:
        return
    q_len, kv_len = shape
    q = torch.randn(1, 2, q_len, 8, generator=generator(1))
    k, v = (torch.randn(1, 1, kv_len, 8, generator=generator(s)) for s in (2, 3))
    for causal in (False, True):

        def run(causal: bool = causal) -> torch.Tensor:
            chosen = method
            if isinstance(method, Rettention):
                chosen = method.calibrated(q, k, v, causal=causal, block_size=block_size)
            layout = chosen.select(q, k, causal=causal, block_size=block_size)
            out = api.sparse_attention(q, k, v, layout, impl="reference")
            return chosen.correct(q, k, v, out, layout, causal=causal)

        out = built(run, [*fields, "block_size"])
        if out is not None:
            assert out.shape == q.shape
            assert_finite(out)
            event("ran end to end")


# ---------------------------------------------------------------------------- trace config
@pytest.fixture(scope="module")
def trace_model() -> Any:
    """A tiny two-layer token model (built once, before the timed examples)."""
    task = toy_tasks.AssociativeRecall(vocab_size=16, seq_len=10, n_pairs=2)
    config = ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, attn_only=True, seed=0)
    return build_model(task, config).eval()


def index_lists(high: int) -> st.SearchStrategy[Any]:
    return mostly(st.one_of(st.none(), st.lists(st.integers(-1, high), max_size=3)))


TRACE_FIELDS = {
    **hinted(TraceConfig),
    "layers": index_lists(2),
    "heads": index_lists(2),
    "pattern_queries": index_lists(10),
    "max_pattern_bytes": mostly(st.sampled_from([0, 100, 2**20, 2**31])),
    "ps": mostly(st.lists(st.floats(-0.1, 1.1), max_size=3)),
    "sink_tokens": mostly(st.integers(-1, 12)),
    # "triton" would run Triton's interpreter or fail by environment on CPU.
    "impl": mostly(st.sampled_from(["auto", "reference"])),
}


@settings(FUZZ, max_examples=40)
@given(kwargs=changes(TRACE_FIELDS), relevant=st.booleans())
def test_trace_config_traces_or_names_the_field(trace_model, kwargs, relevant) -> None:
    config = built(lambda: TraceConfig(**kwargs), field_names(TraceConfig))
    if config is None:
        return
    tokens = torch.randint(0, 16, (2, 10), generator=generator())
    positions = torch.randint(-1, 10, (2, 10, 2), generator=generator()) if relevant else None
    result = built(
        lambda: trace(trace_model, tokens, config, relevant_positions=positions),
        [*field_names(TraceConfig), "relevant_positions"],
    )
    if result is None:
        return
    for layer in result.layers:
        assert_finite(*result.stats.get(layer, {}).values())
        if layer in result.patterns:
            assert_finite(result.patterns[layer])
    assert TraceConfig.from_dict(config.to_dict()) == config
    event("ran end to end")


# ---------------------------------------------------------------------------- model config
MODEL_TASKS = [
    toy_tasks.AssociativeRecall(vocab_size=16, seq_len=8, n_pairs=2),
    toy_tasks.SingleLocationRegression(seq_len=8, d=4),
]
MODEL_FIELDS = {**hinted(ModelConfig), "act_fn": mostly(st.sampled_from(ACT_FNS))}


@pytest.fixture(scope="module")
def warm_models() -> None:
    """Import transformer_lens and build once before the timed examples."""
    build_model(MODEL_TASKS[0], ModelConfig(n_layers=1))


def small_model(config: ModelConfig) -> bool:
    sizes = (config.n_layers, config.d_model, config.n_heads, config.d_head, config.mlp_width)
    return config.n_layers <= 6 and all(size <= 512 for size in sizes)


@settings(FUZZ, max_examples=30, deadline=timedelta(seconds=10))
@given(kwargs=changes(MODEL_FIELDS), task=st.sampled_from(MODEL_TASKS))
def test_model_config_builds_and_runs_or_names_the_field(warm_models, kwargs, task) -> None:
    config = built(lambda: ModelConfig(**kwargs), field_names(ModelConfig))
    if config is None or not small_model(config):
        return
    model = built(lambda: build_model(task, config), ["input_init", "readout_init"])
    if model is None:  # a token model asked for a continuous front end's initialisation
        return
    batch = task.sample(2, generator())
    with torch.no_grad():
        out = model(batch.inputs)
    assert out.shape[:2] == (2, task.seq_len)
    assert_finite(out)
    assert ModelConfig.from_dict(config.to_dict()) == config
    event("ran end to end")


# ---------------------------------------------------------------------------- train config
TINY_RECALL = {"vocab_size": 16, "seq_len": 8, "n_pairs": 2}
TINY_MODEL = ModelConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, attn_only=True)
TRAIN_BASE = dict(
    task="assoc_recall",
    task_overrides=TINY_RECALL,
    model=TINY_MODEL,
    steps=2,
    batch_size=4,
    eval_every=1,
    eval_batch_size=4,
    metrics_every=1,
    checkpoint_every=2,
    device="cpu",
)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(), st.text())
TRAIN_FIELDS = {
    "task": mostly(
        st.one_of(
            st.sampled_from(toy_tasks.names()),
            st.just(toy_tasks.AssociativeRecall(vocab_size=12, seq_len=6, n_pairs=1)),
        )
    ),
    "task_overrides": mostly(
        st.one_of(
            st.just(TINY_RECALL),
            st.fixed_dictionaries({}, optional={k: st.integers(-1, 20) for k in TINY_RECALL}),
            st.dictionaries(st.sampled_from(["n_pairs", "nope", "d"]), json_scalars, max_size=2),
        )
    ),
    "model": mostly(
        st.one_of(
            st.just(TINY_MODEL),
            st.builds(
                lambda positional: TINY_MODEL.replace(positional=positional), st.just("rotary")
            ),
            st.builds(EmergenceToyConfig, repeat_logits=mostly(st.sampled_from(REPEAT_LOGITS))),
        )
    ),
    "steps": mostly(st.integers(-1, 3)),
    "batch_size": mostly(st.integers(-1, 6)),
    "train_samples": mostly(st.one_of(st.none(), st.integers(-1, 12))),
    "optimizer": mostly(st.sampled_from(OPTIMIZERS)),
    "lr": mostly(st.floats(1e-4, 1.0)),
    "weight_decay": mostly(st.floats(0.0, 0.1)),
    "momentum": mostly(st.floats(0.0, 1.0)),
    "schedule": mostly(st.sampled_from(SCHEDULES)),
    "gamma": mostly(st.floats(0.0, 1.0)),
    "step_every": mostly(st.integers(-1, 3)),
    "warmup_steps": mostly(st.integers(-1, 3)),
    "grad_clip": mostly(st.one_of(st.none(), st.floats(0.0, 2.0))),
    "seed": mostly(st.one_of(st.integers(-1, 3), st.just(MAX_SEED))),
    "eval_every": mostly(st.integers(-1, 3)),
    "eval_batch_size": mostly(st.integers(-1, 6)),
    "metrics_every": mostly(st.integers(-1, 3)),
    "checkpoint_every": mostly(st.integers(-1, 3)),
    "eval_metrics": mostly(
        st.one_of(
            st.lists(st.sampled_from(["attention", "stability", "nope"]), max_size=2),
            st.just("attention"),
        )
    ),
    "sparse": mostly(
        st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {"method": mostly(st.sampled_from(["top_k", "sink_window"]))},
                optional={
                    "hparams": mostly(
                        st.one_of(
                            st.just({}), st.fixed_dictionaries({"k": mostly(st.integers(-1, 4))})
                        )
                    ),
                    "layers": mostly(
                        st.one_of(st.none(), st.lists(st.integers(-1, 1), max_size=2))
                    ),
                    "block_size": mostly(st.sampled_from([16, 32, 8, 48])),
                },
            ),
        )
    ),
    "mixed_precision": flags,
    "early_stop": mostly(
        st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {"metric": st.sampled_from(["eval_loss", "eval_accuracy", "loss"])},
                optional={
                    "below": mostly(st.floats(-1.0, 10.0)),
                    "above": st.floats(-1.0, 10.0),
                    "patience": mostly(st.integers(-1, 2)),
                },
            ),
        )
    ),
    "device": mostly(st.sampled_from(["auto", "cpu", "cuda", "cuda:0", "tpu"])),
    "curriculum": mostly(
        st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {
                    name: st.fixed_dictionaries(
                        {
                            "start": mostly(st.integers(0, 3)),
                            "end": mostly(st.integers(1, 6)),
                            "increment": mostly(st.integers(-1, 2)),
                            "interval": mostly(st.integers(0, 2)),
                        }
                    )
                    for name in ("dims", "points")
                }
            ),
        )
    ),
    "eval_task_overrides": mostly(
        st.one_of(
            st.just({}),
            st.dictionaries(st.sampled_from(["n_pairs", "nope", "cross_sample_p"]), json_scalars),
        )
    ),
}
TRAIN_NAMES = {
    *field_names(TrainConfig),
    *field_names(ModelConfig),
    *field_names(EmergenceToyConfig),
    *(field for task in toy_tasks.names() for field in field_names(toy_tasks.task_class(task))),
    *("metric", "below", "above", "patience", "nope", "method", "hparams", "layers", "block_size"),
    *("dims", "points", "start", "end", "increment", "interval"),
}


def small_run(config: TrainConfig) -> bool:
    """Cheap enough to train here: a few tiny steps."""
    return (
        config.steps <= 3
        and config.batch_size <= 8
        and config.eval_batch_size <= 8
        and (config.train_samples or 0) <= 16
        and config.resolved_task().seq_len <= 96
    )


@pytest.fixture(scope="module")
def warm_training() -> None:
    """Import and run the training code once before the timed examples."""
    with tempfile.TemporaryDirectory() as out:
        train(TrainConfig(**TRAIN_BASE), out, progress=False)


def is_finite_number(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


@settings(FUZZ, max_examples=25, deadline=timedelta(seconds=20))
@given(kwargs=changes(TRAIN_FIELDS))
def test_train_config_trains_or_names_the_field(warm_training, kwargs) -> None:
    config = built(lambda: TrainConfig(**{**TRAIN_BASE, **kwargs}), TRAIN_NAMES)
    if config is None:
        return
    assert TrainConfig.from_dict(config.to_dict()) == config
    if not small_run(config):
        return
    with tempfile.TemporaryDirectory() as out:
        result = built(lambda: train(config, out, progress=False), ["device"])
    if result is not None:
        assert all(is_finite_number(value) for value in result.metrics.values()), result.metrics
        event("ran end to end")


# ---------------------------------------------------------------------------- experiment specs
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(), inner)
)
SPEC_BASE = {"task": {"name": "single_location", "seq_len": 8}, "steps": 10, "lr": 0.001}
paths = st.sampled_from(["steps", "lr", "task.seq_len", "task", "steps,lr", "nope", "task.nope"])
SPEC_FIELDS = {
    "name": mostly(st.one_of(st.sampled_from(["toy", "toy_2"]), st.text(max_size=3))),
    "description": mostly(st.just("a spec")),
    "base": mostly(st.one_of(st.just(SPEC_BASE), st.dictionaries(st.text(), json_values))),
    "sweep": mostly(
        st.one_of(
            st.dictionaries(paths, st.lists(st.one_of(json_values, st.just([1, 2])), max_size=3)),
            st.dictionaries(hashable_junk, st.just([1]), min_size=1, max_size=1),
        )
    ),
    "seeds": mostly(st.one_of(st.lists(st.integers(-1, 3), max_size=3), st.tuples(st.integers()))),
    "quick": mostly(
        st.fixed_dictionaries(
            {},
            optional={
                "base": mostly(st.sampled_from([{"steps": 2}, {"task.seq_len": 4}])),
                "sweep": st.dictionaries(paths, st.lists(json_values, max_size=2)),
                "seeds": mostly(st.just([0])),
                "nope": json_values,
            },
        )
    ),
    "analysis": mostly(st.dictionaries(st.text(), json_values, max_size=2)),
}


@settings(FUZZ, max_examples=60)
@given(kwargs=changes(SPEC_FIELDS, most=4), direct=st.booleans())
def test_experiment_spec_expands_or_names_the_field(kwargs, direct) -> None:
    data = {"name": "toy", "description": "a spec", "base": SPEC_BASE, **kwargs}
    spec = built(
        lambda: ExperimentSpec(**data) if direct else ExperimentSpec.from_dict(data),
        [*field_names(ExperimentSpec), "spec", "quick.base", "quick.sweep", "quick.seeds"],
    )
    if spec is None:
        return
    configs = spec.configs()
    assert len(configs) == math.prod(map(len, spec.sweep.values())) * len(spec.seeds)
    for config in [*configs, *spec.quick_variant().configs()]:
        config_hash(config)
    assert ExperimentSpec.from_dict(spec.to_dict()).experiment_hash() == spec.experiment_hash()
    event("ran end to end")


# ---------------------------------------------------------------------------- SAEs
SAE_FIELDS = hinted(SAEConfig) | {
    "architecture": mostly(st.sampled_from(ARCHITECTURES)),
    "device": mostly(st.sampled_from(["auto", "cpu", "cuda", "cuda:0", "tpu"])),
}
SAE_BASE = {"steps": 3, "batch_size": 16, "expansion": 2, "k": 4, "device": "cpu"}


@settings(FUZZ, max_examples=30, deadline=timedelta(seconds=20))
@given(kwargs=changes(SAE_FIELDS))
def test_sae_config_trains_or_names_the_field(kwargs) -> None:
    config = built(lambda: SAEConfig(**{**SAE_BASE, **kwargs}), field_names(SAEConfig))
    if config is None:
        return
    assert SAEConfig.from_dict(config.to_dict()) == config
    if config.steps > 20 or config.batch_size > 128 or config.expansion > 8:
        return  # valid, but not small enough to train here
    store = ActivationStore((2, 4))
    store.add(torch.randn(64, 2, 4, generator=generator()), torch.zeros(64, 2, dtype=torch.int64))
    with tempfile.TemporaryDirectory() as out:
        trained = built(
            lambda: train_sae(store, config, f"{out}/sae", layer=0, model_name="t", progress=False),
            ["k", "batch_size", "device"],
        )
    if trained is not None:
        assert_finite(*trained.sae.state_dict().values())
        event("trained")


@settings(FUZZ, max_examples=40)
@given(
    kwargs=changes(hinted(TaskSource) | {"task": mostly(st.just(toy_tasks.get("assoc_recall")))})
)
def test_task_source_draws_or_names_the_field(kwargs) -> None:
    fields = {
        "task": toy_tasks.get("assoc_recall", seq_len=16, n_pairs=2),
        "n_examples": 5,
        **kwargs,
    }
    source = built(lambda: TaskSource(**fields), field_names(TaskSource))
    if source is None or source.n_examples > 64:
        return
    rows = sum(int(keep.sum()) for _, keep in source.batches())
    assert source.n_batches() == -(-source.n_examples // source.batch_size)
    assert rows == source.n_rows()  # every recall example scores the same number of positions
