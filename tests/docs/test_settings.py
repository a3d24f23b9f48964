"""Each setting is declared once, on the schema (pretrace.config.PretraceConfig): the Dagster
resource's fields and docs/configuration.md are derived from it, and a test fails when either
has a setting the schema lacks, lacks one it has, or says something else about it."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from pretrace.config import PretraceConfig, reference_markdown
from pretrace.resources.pretrace import PretraceResource

ROOT = Path(__file__).resolve().parents[2]
RESOURCE_ONLY = {"damping_absolute", "demo"}  # the Dagster forms of `damping: {absolute: x}` and of `pretrace demo`


def test_every_setting_is_described_on_the_schema():
    assert [key for key, field in PretraceConfig.model_fields.items() if not (field.description or "").strip()] == []


def test_the_resource_has_exactly_the_schemas_settings_with_their_descriptions():
    resource = PretraceResource.model_fields
    assert set(resource) - RESOURCE_ONLY == set(PretraceConfig.model_fields)
    for key, field in PretraceConfig.model_fields.items():
        assert resource[key].description == field.description, key


def test_the_resources_defaults_are_the_schemas():
    assert PretraceResource().config == PretraceConfig()


def test_the_configuration_page_is_generated_from_the_schema():
    assert (ROOT / "docs" / "configuration.md").read_text() == reference_markdown(), (
        "docs/configuration.md is stale: run `make docs`"
    )


def test_the_configuration_page_lists_every_setting_and_its_yaml_reads_back():
    page = reference_markdown()
    listed = re.findall(r"^\| `(\w+)` \|", page, flags=re.MULTILINE)
    assert listed == list(PretraceConfig.model_fields)
    block = page.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert PretraceConfig.model_validate(yaml.safe_load(block)) == PretraceConfig()


def test_every_setting_a_page_shows_in_yaml_exists():
    """A documented example cannot use a setting the schema does not have."""
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for block in re.findall(r"```yaml\n(.*?)```", page.read_text(), flags=re.DOTALL):
            data = yaml.safe_load(block)
            if isinstance(data, dict) and {"model", "corpus"} & set(data):
                unknown = set(data) - set(PretraceConfig.model_fields)
                assert not unknown, f"{page.name}: {sorted(unknown)} are not settings"
