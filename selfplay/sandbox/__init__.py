"""The sandbox: untrusted Python run in a separate, contained process.

`run_python(code, limits)` runs a program and reports how it ended (`SandboxResult`); nothing
the code does raises in the caller (supervisor.py, with the child-side launcher.py: the
containment layers are described there and in docs/judges.md). `run_unit_tests` runs a
response's code against hidden unit tests in it (unit_tests.py): the `code` task's `verify`
and the `tool` critic both use it.
"""

from selfplay.sandbox.supervisor import Limits, SandboxResult, run_python
from selfplay.sandbox.unit_tests import (
    FunctionTests,
    UnitTest,
    UnitTestReport,
    extract_code,
    run_unit_tests,
)

__all__ = [
    "FunctionTests",
    "Limits",
    "SandboxResult",
    "UnitTest",
    "UnitTestReport",
    "extract_code",
    "run_python",
    "run_unit_tests",
]
