"""The card and the README publish only figures the evaluation reports hold (value, n, split), and the card's
metadata parses as the Hub reads it."""

from __future__ import annotations

import json
import re

import pytest
from huggingface_hub import ModelCard

from eyeglass3d.evaluation import card_figures
from eyeglass3d.paths import REPO_ROOT

CARD = REPO_ROOT / "weights_card" / "README.md"
README = REPO_ROOT / "README.md"


def test_card_metadata_parses():
    card = ModelCard.load(CARD)
    assert card.data.license == "other" and (CARD.parent / card.data.license_link).is_file()
    assert card.data.library_name == "diffusers"
    for result in card.data.eval_results or []:
        assert result.dataset_split == "test", result.metric_name


@pytest.mark.parametrize("document", [README, CARD], ids=["README", "card"])
def test_every_published_figure_is_the_one_its_report_holds(document):
    text = document.read_text()
    assert card_figures.filled(document) == text, (
        f"{document.name} differs from weights_card/eval/: run python -m eyeglass3d.evaluation.card_figures")
    annotations = list(card_figures.ANNOTATION.finditer(text))
    assert len(annotations) == text.count("<!-- eval "), "an annotation the checker cannot read"
    assert len(annotations) >= 20
    # The README publishes test (or example-photo) figures; the card also shows the val figures that decided a
    # setting or a version, and says so beside them.
    allowed = ("test", "examples") if document == README else ("val", "test", "examples")
    for match in annotations:
        assert card_figures.REPORT_NAME.match(match["file"])["split"] in allowed, match[0]


def test_stale_figures_are_gone():
    text = README.read_text() + CARD.read_text()
    for stale in ("1.2e-4", "0.251", "0.178 mm", "three crops along the diagonal", "2.68", "without native bf16)"):
        assert stale not in text, stale


def _report(folder, name, payload):
    (folder / name).write_text(json.dumps(payload))


def test_fill_writes_values_from_reports_and_marks_missing_ones(tmp_path):
    _report(tmp_path, "thing_test.json", {"split": "test", "n": 12, "a": {"b": [0.5, 0.123456]}})
    text = ("x **0.9**<!-- eval thing_test.json a.b.1 .3f --> and 7<!-- eval thing_test.json n d --> | "
            "(to be re-measured)<!-- eval thing_test.json a.b.0 .1% --> | "
            "1.0<!-- eval other_test.json a .2f -->")
    filled = card_figures.fill_annotations(text, tmp_path)
    assert filled == ("x **0.123**<!-- eval thing_test.json a.b.1 .3f --> and 12<!-- eval thing_test.json n d --> | "
                      "50.0%<!-- eval thing_test.json a.b.0 .1% --> | "
                      "(to be re-measured)<!-- eval other_test.json a .2f -->")
    assert card_figures.fill_annotations(filled, tmp_path) == filled


def test_a_report_must_be_of_the_split_its_name_says(tmp_path):
    _report(tmp_path, "thing_test.json", {"split": "val", "n": 1})
    with pytest.raises(ValueError, match="split"):
        card_figures.fill_annotations("1<!-- eval thing_test.json n d -->", tmp_path)
    with pytest.raises(ValueError, match="names are"):
        card_figures.fill_annotations("1<!-- eval thing.json n d -->", tmp_path)


def test_model_index_is_built_from_the_reports(tmp_path):
    assert card_figures.model_index(tmp_path) == ""  # no report, no claim
    _report(tmp_path, "reconstruction_test.json", {
        "split": "test", "n": 880,
        "landmark_reprojection_nme": {"mesh": {"mean": 0.03384}},
        "glasses_invariance_rms_mm": {"glasses_removed": {"median": 0.1764}},
    })
    text = "---\nlicense: other\nmodel-index:\n  - stale: 1\n---\n\n# body\n"
    filled = card_figures.fill_model_index(text, tmp_path)
    assert filled.startswith("---\nlicense: other\nmodel-index:\n") and filled.endswith("\n---\n\n# body\n")
    assert "stale" not in filled and '"UTKFace, eyeglass3d test split (880 glasses-free faces' in filled
    values = re.findall(r"value: (\S+)", filled)
    assert values == ["0.0338", "0.176"]
