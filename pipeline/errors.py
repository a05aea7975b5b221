"""The two ways a task fails, and the exit code each maps to."""

from typing import List, NamedTuple


class Problem(NamedTuple):
    field: str
    value: object
    reason: str

    def __str__(self) -> str:
        return f"{self.field} = {self.value!r}: {self.reason}"


class BadInput(Exception):
    """Input that cannot work (exit 2). Raised before anything on the system changes."""

    exit_code = 2

    def __init__(self, field: str, value: object, reason: str):
        self.problems: List[Problem] = [Problem(field, value, reason)]
        super().__init__(str(self.problems[0]))

    @classmethod
    def of(cls, problems: List[Problem]) -> "BadInput":
        err = cls(*problems[0])
        err.problems = list(problems)
        err.args = ("\n".join(str(p) for p in problems),)
        return err


class Failed(Exception):
    """Something went wrong while changing the system (exit 1); what this run created is rolled back."""

    exit_code = 1
