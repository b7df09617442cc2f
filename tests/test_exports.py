from __future__ import annotations

import subprocess
import sys
import types

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


def test_import_needs_no_optional_extra() -> None:
    code = (
        "import sys\n"
        "for name in ('fastapi', 'orjson', 'typer', 'uvicorn', 'jinja2'):\n"
        "    sys.modules[name] = None\n"
        "import coatcheck\n"
        "print(coatcheck.SessionMiddleware.__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "SessionMiddleware"


def test_fastapi_module_names_the_missing_extra() -> None:
    code = "import sys\nsys.modules['fastapi'] = None\nimport coatcheck.fastapi\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "pip install 'coatcheck[fastapi]'" in result.stderr


def test_otel_module_names_the_missing_extra() -> None:
    code = "import sys\nsys.modules['opentelemetry'] = None\nimport coatcheck.otel\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "pip install 'coatcheck[otel]'" in result.stderr


def test_postgres_store_names_the_missing_extra() -> None:
    code = "import sys\nsys.modules['psycopg'] = None\nimport coatcheck.stores.postgres\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "pip install 'coatcheck[postgres]'" in result.stderr


def test_cookie_store_names_the_missing_extra() -> None:
    code = "import sys\nsys.modules['cryptography'] = None\nimport coatcheck.stores.cookie\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "pip install 'coatcheck[cookie]'" in result.stderr
    # The core never needs it: the middleware tells the cookie store by its methods.
    core = "import sys\nsys.modules['cryptography'] = None\nimport coatcheck, coatcheck.fastapi\n"
    assert subprocess.run([sys.executable, "-c", core], capture_output=True).returncode == 0
