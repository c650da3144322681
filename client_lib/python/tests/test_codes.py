"""The package's codes are the C ABI's: every read status and error code of
liblarder.so (larder_status_name, larder_error_name) has its Python twin
with the same number, and no Python code lacks a C one. The C constants are
checked against the C++ enums by tests/status_codes_test.cc."""

import re

from larder import _native, errors
from larder.client import Status

# Numbers to probe for names: far beyond every code, and int32's extremes.
PROBE = list(range(-1024, 1025)) + [-2**31, 2**31 - 1]


def c_names(name_of):
    """{number: name} of every number the C function names."""
    named = {}
    for v in PROBE:
        name = name_of(v)
        assert name, "no name for %d" % v
        name = name.decode()
        if name != "unknown":
            named[v] = name
    return named


def exception_code_name(cls):
    """The LARDER_E_* name an exception class stands for: XyzError is
    LARDER_E_XYZ; a leading "Larder" keeps a name clear of Python's own
    (LarderSystemError is LARDER_E_SYSTEM)."""
    name = re.sub(r"^Larder|Error$", "", cls.__name__)
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def test_every_read_status_is_the_c_status():
    c = c_names(_native.larder_status_name)
    python = {s.value: s.name.lower() for s in Status}
    assert python == c


def test_every_error_code_is_the_c_code():
    c = c_names(_native.larder_error_name)
    assert c.pop(0) == "ok"
    python = {code: exception_code_name(cls) for code, cls in errors._BY_CODE.items()}
    assert python == c
    for code, cls in errors._BY_CODE.items():
        assert cls.code == code
        assert isinstance(errors.from_code(code, "message"), cls)
    assert type(errors.from_code(max(c) + 1, "message")) is errors.LarderError


def test_every_exception_class_has_a_code():
    classes = {obj for obj in vars(errors).values()
               if isinstance(obj, type) and issubclass(obj, errors.LarderError) and obj is not errors.LarderError}
    # A refinement (a more precise class for one case) carries its base's code.
    refinements = {errors.FieldNotFoundError, errors.GroupNotFoundError}
    assert classes - refinements == set(errors._BY_CODE.values())
    for cls in refinements:
        assert issubclass(cls, errors._BY_CODE[cls.code])


def test_every_code_has_one_distinct_name():
    for name_of in (_native.larder_status_name, _native.larder_error_name):
        names = list(c_names(name_of).values())
        assert all(names)
        assert len(set(names)) == len(names)
