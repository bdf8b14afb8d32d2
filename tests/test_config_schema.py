"""docs/config.md is generated from the code that validates configurations, and must stay equal to it."""

from __future__ import annotations

from pathlib import Path

from stmorph.pipeline._schema import config_schema_markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_docs_config_md_is_current():
    want = config_schema_markdown()
    assert DOC.exists(), "docs/config.md is missing: regenerate it (see the comment at its top)"
    assert DOC.read_text() == want, (
        "docs/config.md differs from the configuration schema in the code: regenerate it with\n"
        "python -c \"from stmorph.pipeline._schema import config_schema_markdown as f; "
        "open('docs/config.md','w').write(f())\""
    )


def test_every_documented_space_key_is_accepted(tmp_path):
    """A key listed for a kind passes the whole-config validation (and an invented one does not)."""
    import pytest

    from stmorph.errors import StmorphInputError
    from stmorph.pipeline._config import config_from_dict
    from stmorph.pipeline._spaces import space_parameters

    keys = sorted(space_parameters("cellprofiler"))
    assert "masks" in keys and "crop_um" in keys
    config_from_dict({"sample": {"reader": "synthetic"}, "spaces": {"CP": {"kind": "cellprofiler", "crop_um": 20.0}}},
                     base_dir=tmp_path)
    with pytest.raises(StmorphInputError, match="spaces.CP.crop_ums"):
        config_from_dict({"sample": {"reader": "synthetic"}, "spaces": {"CP": {"kind": "cellprofiler", "crop_ums": 2}}},
                         base_dir=tmp_path)


def test_unknown_protocol_is_refused_before_anything_runs(tmp_path):
    import pytest

    from stmorph.errors import StmorphInputError
    from stmorph.pipeline._config import config_from_dict

    raw = {"sample": {"reader": "synthetic"}, "spaces": {"TC": {"kind": "counts"}}, "evaluate": {"protocol": "studdy"}}
    with pytest.raises(StmorphInputError, match="did you mean 'study'"):
        config_from_dict(raw, base_dir=tmp_path)


def test_compute_section_is_validated(tmp_path):
    import pytest

    from stmorph.errors import StmorphInputError
    from stmorph.pipeline._config import config_from_dict

    base = {"sample": {"reader": "synthetic"}, "spaces": {"TC": {"kind": "counts"}}}
    cfg = config_from_dict({**base, "compute": {"workers": 4, "tile_size": 1024}}, base_dir=tmp_path)
    assert cfg.compute == {"workers": 4, "tile_size": 1024}
    with pytest.raises(StmorphInputError, match="compute.worker"):
        config_from_dict({**base, "compute": {"worker": 4}}, base_dir=tmp_path)
    with pytest.raises(StmorphInputError, match="compute.workers"):
        config_from_dict({**base, "compute": {"workers": 0}}, base_dir=tmp_path)
