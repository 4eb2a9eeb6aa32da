"""The workflow catalog: the seeds as data, user files, raw ids."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from producers.catalog import (
    BUILTIN_CATALOG,
    WORKFLOWS_FILE_ENV,
    CatalogError,
    UnknownWorkflowError,
    load_catalog,
)

SEEDS = Path(__file__).resolve().parents[3] / "shared" / "seeds"


def test_builtin_catalog_holds_the_five_seed_workflows() -> None:
    catalog = load_catalog({})
    assert [w.name for w in catalog] == [
        "scene-script",
        "stock-video",
        "character-video",
        "product-shot",
        "sketch-maker",
    ]
    assert catalog.resolve("character-video").price_usd == pytest.approx(3.9674)
    assert catalog.resolve("character-video").expected_duration_s == pytest.approx(673.9)
    assert catalog.resolve("product-shot").price_usd is None  # the seed gives no price
    assert catalog.resolve("sketch-maker").price_usd == pytest.approx(0.1006)


@pytest.mark.skipif(not SEEDS.is_dir(), reason="shared/seeds is not beside the project")
def test_catalog_matches_the_seed_documents() -> None:
    """Every id, input name and default is taken verbatim from a seed."""
    seeds = "\n".join(p.read_text() for p in sorted(SEEDS.iterdir()))
    for workflow in load_catalog({}):
        assert f"https://api.segmind.com/workflows/{workflow.workflow_id}" in seeds
        for spec in workflow.inputs or ():
            assert f'"{spec.name}"' in seeds
            assert spec.default is not None
            quoted = json.dumps(spec.default) if isinstance(spec.default, str) else None
            assert (quoted or f'"{spec.default}"') in seeds, (workflow.name, spec.name)
        if workflow.price_usd is not None:
            assert f"~${workflow.price_usd}" in seeds


def test_integer_default_given_as_a_string_by_the_seed_is_an_integer() -> None:
    seed = load_catalog({}).resolve("stock-video").input("seed")
    assert seed is not None
    assert seed.type == "integer"
    assert seed.default == 1323456


def test_lookup_by_name_and_by_workflow_id_give_the_same_entry() -> None:
    catalog = load_catalog({})
    assert catalog.resolve("68628fe34727e611dfa219b4-v4") is catalog.resolve("character-video")


def test_raw_workflow_id_resolves_with_inputs_passed_through() -> None:
    workflow = load_catalog({}).resolve("0123456789abcdef01234567-v12")
    assert workflow.workflow_id == "0123456789abcdef01234567-v12"
    assert not workflow.in_catalog
    assert workflow.inputs is None


@pytest.mark.parametrize(
    "name",
    [
        "",
        "no-such-workflow",
        "0123456789abcdef01234567",  # no version
        "0123456789ABCDEF01234567-v1",  # upper case
        "0123456789abcdef0123456-v1",  # 23 hex
        "0123456789abcdef01234567-v1/../x",
    ],
)
def test_anything_else_is_an_unknown_workflow(name: str) -> None:
    with pytest.raises(UnknownWorkflowError, match="unknown workflow"):
        load_catalog({}).resolve(name)


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "workflows.json"
    path.write_text(json.dumps(data))
    return path


def test_user_file_adds_and_overrides_workflows(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "workflows": [
                {
                    "name": "upscale",
                    "workflow_id": "aaaaaaaaaaaaaaaaaaaaaaaa-v3",
                    "inputs": [{"name": "image", "type": "uri"}],
                    "outputs": [{"keyname": "image", "type": "image"}],
                    "price_usd": 0.05,
                    "expected_duration_s": 20,
                },
                {
                    "name": "sketch-maker",
                    "workflow_id": "66cec9a38aeef98f887211f1-v2",
                    "inputs": [{"name": "input_image", "type": "uri"}],
                },
            ]
        },
    )
    catalog = load_catalog({WORKFLOWS_FILE_ENV: str(path)})
    assert len(catalog) == 6
    assert catalog.resolve("upscale").price_usd == 0.05
    assert catalog.resolve("sketch-maker").workflow_id == "66cec9a38aeef98f887211f1-v2"
    # The overridden id no longer names a catalog entry; it is still a valid raw id.
    assert not catalog.resolve("66cec9a38aeef98f887211f1-v1").in_catalog


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not JSON"),
        (json.dumps({"workflows": [{"name": "x", "workflow_id": "nope"}]}), "not valid"),
        (
            json.dumps(
                {
                    "workflows": [
                        {
                            "name": "x",
                            "workflow_id": "aaaaaaaaaaaaaaaaaaaaaaaa-v1",
                            "inputs": [{"name": "n", "type": "integer", "default": "12"}],
                        }
                    ]
                }
            ),
            "integer default",
        ),
        (json.dumps({"workflows": [], "extra": 1}), "not valid"),
    ],
)
def test_invalid_user_file_is_a_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(CatalogError, match=re.escape(message)):
        load_catalog({WORKFLOWS_FILE_ENV: str(path)})


def test_missing_user_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read workflow catalog"):
        load_catalog({WORKFLOWS_FILE_ENV: str(tmp_path / "missing.json")})


def test_builtin_catalog_file_is_shipped_as_package_data() -> None:
    assert BUILTIN_CATALOG.is_file()
