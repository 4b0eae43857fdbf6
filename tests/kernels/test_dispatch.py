"""The implementation choice and interpreter detection (`kernels.dispatch`)."""

import pytest

from kernels import dispatch


@pytest.mark.parametrize("value", ["1", "0", "", "true", "TRUE", "on", "yes", "y", "false", "2"])
def test_interpret_mode_reads_the_variable_as_triton_does(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    libtriton = pytest.importorskip("triton._C.libtriton")
    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert dispatch.interpret_mode() == libtriton.getenv_bool("TRITON_INTERPRET", False)


def test_interpret_mode_is_off_without_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not dispatch.interpret_mode()


def test_check_impl_names_the_choices() -> None:
    with pytest.raises(ValueError, match="impl must be one of"):
        dispatch.check_impl("cuda")
