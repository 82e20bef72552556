"""How the command turns an error into one line, or leaves a bug its traceback."""

from rsground_jax.cli.main import user_message
from rsground_jax.errors import UserError


def _raised(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return e
    raise AssertionError("nothing raised")


def test_user_errors_and_file_system_refusals_are_one_line():
    assert user_message(UserError("a.xml: unparsable\nXML")) == "a.xml: unparsable XML"
    assert user_message(OSError(28, "No space left on device", "/w/metrics.json")) == \
        "/w/metrics.json: No space left on device"

    def wrapped():
        try:
            raise OSError(30, "Read-only file system", "/ro/ckpt")
        except OSError as e:
            raise RuntimeError("save failed") from e  # a library naming its cause

    assert user_message(_raised(wrapped)) == "/ro/ckpt: Read-only file system"


def test_a_bug_met_while_handling_a_file_error_keeps_its_traceback():
    def bug():
        try:
            raise FileNotFoundError(2, "No such file or directory", "/x")
        except OSError:
            return {}["missing"]  # a KeyError raised during the handling: not the file's fault

    assert user_message(_raised(bug)) is None
    assert user_message(ValueError("deep inside JAX")) is None
