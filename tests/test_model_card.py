"""The model card's metadata parses as the Hub reads it, and its structured figures are the ones its text reports."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard

CARD_DIR = Path(__file__).resolve().parent.parent / "weights_card"


def test_card_metadata_parses_and_its_figures_appear_in_the_text():
    card = ModelCard.load(CARD_DIR / "README.md")
    assert card.data.license == "other" and (CARD_DIR / card.data.license_link).is_file()
    assert card.data.library_name == "diffusers"
    results = card.data.eval_results
    assert {result.task_type for result in results} >= {"keypoint-detection", "image-to-3d"}
    for result in results:
        assert result.dataset_split == "test", result.metric_name
        assert f"{result.metric_value}" in card.text, f"{result.metric_name}: {result.metric_value} not in the text"
