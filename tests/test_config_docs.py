"""docs/configuration.md is generated from the key definitions and must not go stale."""

from __future__ import annotations

from fedcmi.config.docs import DOC_PATH, configuration_markdown, main
from fedcmi.config.run_config import FIELDS
from fedcmi.methods.registry import METHOD_NAMES


def test_configuration_doc_is_up_to_date():
    assert DOC_PATH.read_text(encoding="utf-8") == configuration_markdown(), (
        "docs/configuration.md is stale: run `python -m fedcmi.config.docs`")


def test_every_key_and_method_is_documented_with_its_default():
    text = configuration_markdown()
    for key, f in FIELDS.items():
        assert f"| `{key}` |" in text, key
        assert f.metadata["doc"].replace("|", "\\|") in text, key
    for name in METHOD_NAMES:
        assert f"| `{name}` |" in text
    assert "| `num-server-rounds` | `40` | must be >= 1 |" in text


def test_check_mode_reports_a_stale_file(tmp_path, capsys):
    doc = tmp_path / "configuration.md"
    assert main(["--out", str(doc)]) == 0
    assert main(["--check", "--out", str(doc)]) == 0
    doc.write_text(doc.read_text().replace("`lr`", "`learning-rate`"))
    assert main(["--check", "--out", str(doc)]) == 1
    assert "stale" in capsys.readouterr().err
