from __future__ import annotations

import pickle
import subprocess
import sys
import types

import pytest

import coatcheck


def test_all_is_sorted_and_importable() -> None:
    assert coatcheck.__all__ == sorted(coatcheck.__all__)
    for name in coatcheck.__all__:
        assert hasattr(coatcheck, name), name
    public = {
        name
        for name, value in vars(coatcheck).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public - {"annotations"} == set(coatcheck.__all__)


def test_the_store_kit_lists_what_it_offers() -> None:
    from coatcheck import store_contract

    assert store_contract.__all__ == sorted(store_contract.__all__)
    public = {
        name
        for name, value in vars(store_contract).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and getattr(value, "__module__", store_contract.__name__) == store_contract.__name__
    }
    assert public == set(store_contract.__all__)


def test_import_needs_no_optional_extra() -> None:
    code = (
        "import sys\n"
        # cryptography too: the middleware tells the cookie store by its methods. And
        # pytest, which only the store kit (coatcheck.store_contract) imports.
        "for name in ('fastapi', 'orjson', 'typer', 'uvicorn', 'jinja2', 'cryptography',"
        " 'pytest'):\n"
        "    sys.modules[name] = None\n"
        "import coatcheck\n"
        "print(coatcheck.SessionMiddleware.__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "SessionMiddleware"


@pytest.mark.parametrize(
    ("blocked", "module", "extra"),
    [
        ("fastapi", "coatcheck.fastapi", "fastapi"),
        ("opentelemetry", "coatcheck.otel", "otel"),
        ("psycopg", "coatcheck.stores.postgres", "postgres"),
        ("cryptography", "coatcheck.stores.cookie", "cookie"),
        ("cryptography", "coatcheck._data_sealing", "cookie"),  # for encrypt_data
    ],
)
def test_an_optional_module_names_its_missing_extra(blocked: str, module: str, extra: str) -> None:
    code = f"import sys\nsys.modules[{blocked!r}] = None\nimport {module}\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert f"pip install 'coatcheck[{extra}]'" in result.stderr


@pytest.mark.parametrize(
    "error",
    [
        coatcheck.MissingDependencyError("redis", "redis"),
        coatcheck.SerializationError("when", "datetime is not JSON"),
        coatcheck.SessionTooLargeError(5000, 4096),
        coatcheck.SessionTooLargeError(5000, 4096, "at most about 2900 bytes fit"),
        coatcheck.SessionLimitError(3),
        coatcheck.StoreUnavailableError("store down", retry_after=4),
    ],
    ids=lambda error: type(error).__name__,
)
def test_errors_survive_pickling(error: coatcheck.CoatcheckError) -> None:
    """Raised in a worker process or a task queue's job, an error is pickled on its way
    back; one whose message is made from its arguments must come back the same."""
    # Notes and attributes travel too (add_note() appends to __notes__, from Python 3.11).
    error.__notes__ = ["while saving the cart"]
    error.request_id = "r-1"  # type: ignore[attr-defined]
    back = pickle.loads(pickle.dumps(error))  # noqa: S301 - what it made itself
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert vars(back) == vars(error)
    assert back.__notes__ == ["while saving the cart"]
