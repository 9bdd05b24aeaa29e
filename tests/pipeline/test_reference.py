"""docs/pipeline_reference.md is generated from medtl/pipeline/config.py: it cannot drift."""

from pathlib import Path

from medtl.pipeline import config
from medtl.pipeline.reference import DOC_PATH, field_comments, pipeline_reference, type_name

ROOT = Path(__file__).resolve().parents[2]


def test_docs_match_the_generated_reference():
    text = pipeline_reference()
    assert (ROOT / DOC_PATH).read_text() == text, (
        "docs/pipeline_reference.md is out of date: run "
        "`python -m medtl.pipeline.reference > docs/pipeline_reference.md`")


def test_every_field_of_every_model_is_listed_with_its_default():
    text = pipeline_reference()
    for model in (config.PipelineConfig, config.DataSpec, config.TaskSpec, config.PretrainSpec,
                  config.EncoderSpec, config.TrainSpec, config.StrategySpec, config.SimilaritySpec,
                  config.EvaluationSpec):
        assert f"### {model.__name__}" in text
        for name in model.model_fields:
            assert f"| `{name}` |" in text, f"{model.__name__}.{name} missing"
    assert "| `epochs` | int | `20` |" in text  # TrainSpec's default, read from the model
    assert "| `manifest` | str | **required** |" in text
    assert "Key: `strategies[]`." in text and "| `lp_ft` |" in text


def test_comments_beside_and_above_fields_become_meanings():
    comments = field_comments(config.TrainSpec)
    assert "frozen-encoder features" in comments["feature_cache"]  # the comment line above the field
    assert "about this many rows per split" in field_comments(config.DataSpec)["max_per_split"]  # the comment beside it
    assert "epochs" not in comments  # no comment: no invented meaning


def test_type_names_read_as_yaml():
    from typing import Literal

    assert type_name(int | None) == "int \\| null"
    assert type_name(Literal["a", "b"]) == '"a" \\| "b"'
    assert type_name(list[float]) == "list of float"
    assert type_name(tuple[int, int, int]) == "[int, int, int]"
