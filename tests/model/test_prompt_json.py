"""JSON prompts -> model types without HTTP: the schema and conversion shared by the HTTP API
and bulk prompt files (the HTTP error codes are tested in tests/serving/test_prompts.py)."""
from __future__ import annotations

import pytest

from model.prompt_json import PromptJsonError, to_prompts
from model.prompt_schema import PromptSchemaError, parse_prompt_list
from model.transforms import PromptError
from model.types import Box, Point

SIZE = (100, 200)  # height, width


def test_a_prompt_list_parses_and_converts() -> None:
    prompts, previous = to_prompts(parse_prompt_list([
        {"type": "box", "xyxy": [1, 2, 30, 40]}, {"type": "point", "xy": [5, 6], "positive": False},
        {"type": "text", "text": "red circle"}]), SIZE, {})
    assert prompts.spatial == (Box(1.0, 2.0, 30.0, 40.0), Point(5.0, 6.0, positive=False))
    assert prompts.text == "red circle" and previous is None


@pytest.mark.parametrize("data, words", [
    ([{"type": "lasso", "xy": [1, 1]}], "prompts.0: Input tag 'lasso'"),
    ([{"type": "point"}], "prompts.0.point.xy: Field required"),
    ([{"type": "point", "xy": [1, 2], "positve": True}], "prompts.0.point.positve"),
    ([{"type": "point", "xy": [float("nan"), 2]}], "prompts.0.point.xy.0"),
    ([], "prompts: List should have at least 1 item"),
    ("point", "prompts: Input should be a valid list"),
])
def test_schema_errors_name_the_field(data: object, words: str) -> None:
    with pytest.raises(PromptSchemaError) as e:
        parse_prompt_list(data)
    assert words in str(e.value)


def test_conversion_errors_are_prompt_errors_naming_the_prompt() -> None:
    with pytest.raises(PromptJsonError) as e:
        to_prompts(parse_prompt_list([{"type": "text", "text": "a"}, {"type": "box", "xyxy": [0, 0, 250, 5]}]),
                   SIZE, {})
    assert isinstance(e.value, PromptError)  # callers that catch the predictor's PromptError catch these too
    assert "prompts[1] (box) corner (x1, y1): (250, 5) is outside the image" in str(e.value)
