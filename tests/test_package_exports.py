import subprocess
import sys

import pytest

import i0t_helpers


@pytest.mark.parametrize("name", sorted(i0t_helpers.__all__))
def test_public_name_resolves(name):
    assert getattr(i0t_helpers, name) is not None


def test_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        i0t_helpers.nope  # noqa: B018


def test_import_does_not_load_torch():
    code = "import sys, i0t_helpers; print('torch' in sys.modules)"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.stdout.strip() == "False"
