"""reports.validation (and the planner's copy of its rule): pydantic errors as the one line a person reads."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydantic import BaseModel, ValidationError, field_validator, model_validator

from planner import errors as planner_errors
from reports import validation


class Request(BaseModel):
    size: int
    name: str = "x"

    @field_validator("name")
    @classmethod
    def _short(cls, value: str) -> str:
        if len(value) > 3:
            raise ValueError("name is at most 3 characters")
        return value

    @model_validator(mode="after")
    def _fits(self) -> Request:
        if self.size < len(self.name):
            raise ValueError("size must hold the name")
        return self


def error(**values: object) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        Request(**values)
    return caught.value


MESSAGES = [validation.pydantic_message, planner_errors.pydantic_message]
FIRST = [validation.first_problem, planner_errors.first_problem]


@pytest.mark.parametrize("message", MESSAGES)
def test_the_value_error_prefix_is_dropped_and_other_messages_kept(message: Callable) -> None:
    (err,) = error(size=9, name="long").errors()
    assert err["msg"] == "Value error, name is at most 3 characters"  # what pydantic says
    assert message(err) == "name is at most 3 characters"
    (err,) = error(size="many").errors()
    assert message(err) == err["msg"] and message(err).startswith("Input should be a valid integer")


@pytest.mark.parametrize("first", FIRST)
def test_first_problem_names_the_field_or_says_the_rule_alone(first: Callable) -> None:
    assert first(error(size=9, name="long")) == "name: name is at most 3 characters"
    assert first(error(size=1, name="abc")) == "size must hold the name"  # a rule across fields has no location
    assert first(error()) == "size: Field required"


def test_error_location_is_dotted() -> None:
    assert validation.error_location({"loc": ("runs", 0, "records")}) == "runs.0.records"
    assert validation.error_location({"loc": ()}) == ""
