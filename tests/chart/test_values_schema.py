"""values.yaml and values.schema.json say the same thing, and both agree with the operator and
the CRDs: no helm or cluster needed."""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from collections.abc import Iterator, Mapping
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from tests.chart.chart_kit import CHART, CRD_DIR, REPO
from thpcheck import __version__
from thpcheck.controller import settings

VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text())
CHECK_CRD = yaml.safe_load((CRD_DIR / "thpchecks.thpcheck.io.yaml").read_text())
CHECK_SPEC = CHECK_CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _value_paths(value: Any, schema: Mapping[str, Any], path: str, *, in_list: bool = False,
                 ) -> Iterator[tuple[str, str]]:
    """(path, problem) for every values key without a schema entry, and every schema
    property without a values key (except in list items: a default toleration need not
    spell out every field a toleration may have)."""
    if isinstance(value, dict):
        properties = schema.get("properties")
        if properties is None:  # a free-form map (nodeSelector, annotations, ...)
            if "additionalProperties" not in schema and value:
                yield path, "a non-empty map whose schema has neither properties nor " \
                            "additionalProperties"
            return
        if schema.get("additionalProperties") is not False:
            yield path, "schema object with properties must set additionalProperties: false"
        for key in value.keys() - properties.keys():
            yield f"{path}.{key}", "in values.yaml but not in values.schema.json"
        if not in_list:
            for key in properties.keys() - value.keys():
                yield f"{path}.{key}", "in values.schema.json but not in values.yaml"
        for key in value.keys() & properties.keys():
            yield from _value_paths(value[key], properties[key], f"{path}.{key}",
                                    in_list=in_list)
    elif isinstance(value, list):
        items = schema.get("items")
        if items is None:
            yield path, "a list whose schema has no items"
            return
        for index, item in enumerate(value):
            yield from _value_paths(item, items, f"{path}[{index}]", in_list=True)


def _described(schema: Mapping[str, Any], path: str) -> Iterator[str]:
    """Paths of schema properties without a description (values are documented there)."""
    for key, sub in (schema.get("properties") or {}).items():
        if not sub.get("description"):
            yield f"{path}.{key}"
        yield from _described(sub, f"{path}.{key}")


def test_values_and_schema_have_the_same_keys() -> None:
    problems = sorted(_value_paths(VALUES, SCHEMA, "values"))
    assert problems == [], "\n".join(f"{p}: {why}" for p, why in problems)


def test_every_schema_property_is_described() -> None:
    assert sorted(_described(SCHEMA, "values")) == []


def test_defaults_validate_against_the_schema() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.Draft7Validator(SCHEMA).validate(VALUES)
    jsonschema.Draft7Validator(SCHEMA).validate(
        _merged(VALUES, yaml.safe_load((CHART / "ci" / "all-values.yaml").read_text())))


@pytest.mark.parametrize(("override", "where"), [
    ({"operator": {"logLevel": "verbose"}}, "logLevel"),
    ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    ({"defaultCheck": {"maxConcurrent": "150%"}}, "maxConcurrent"),
    ({"defaultCheck": {"maxConcurrent": 0}}, "maxConcurrent"),
    ({"defaultCheck": {"paths": ["relative"]}}, "paths"),
    ({"defaultCheck": {"schedule": {"interval": "1 day"}}}, "interval"),
    ({"defaultCheck": {"remediation": {"maxCordoned": -1}}}, "maxCordoned"),
    ({"remediation": {"enable": True}}, "enable"),
    ({"agent": {"mitigationStateDir": "/"}}, "mitigationStateDir"),
])
def test_the_schema_refuses_typos_and_bad_values(override: dict[str, Any], where: str) -> None:
    errors = list(jsonschema.Draft7Validator(SCHEMA).iter_errors(_merged(VALUES, override)))
    assert errors, f"accepted: {override}"
    assert any(where in "/".join(map(str, e.absolute_path)) or where in e.message
               for e in errors), [e.message for e in errors]


def _merged(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: _merged(base.get(k), v) for k, v in override.items()}}
    return override


# -- the chart and the package ---------------------------------------------------------------


def test_app_version_is_the_package_version() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert CHART_META["appVersion"] == __version__ == project["version"]
    assert CHART_META["apiVersion"] == "v2"
    assert CHART_META["kubeVersion"].startswith(">=")


def test_default_image_is_the_operators_default() -> None:
    assert f"{VALUES['image']['repository']}:{CHART_META['appVersion']}" == \
        settings.DEFAULT_IMAGE


def test_tuning_defaults_are_the_operators_defaults() -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(settings.Settings)}
    tuning = VALUES["operator"]["tuning"]
    snake = {re.sub(r"([A-Z])", r"_\1", key).lower(): value for key, value in tuning.items()}
    for key, value in snake.items():
        assert key in defaults, f"operator.tuning.{key} is no operator setting"
        assert value == defaults[key], f"operator.tuning {key}: {value} != {defaults[key]}"
    assert VALUES["operator"]["healthPort"] == defaults["health_port"]
    assert VALUES["metrics"]["port"] == defaults["metrics_port"]
    assert VALUES["agent"]["priorityClassName"] == defaults["priority_class"]
    assert VALUES["agent"]["mitigationPriorityClassName"] == defaults[
        "mitigation_priority_class"]
    assert VALUES["agent"]["mitigationStateDir"] == defaults["mitigation_state_dir"]


# -- the default ThpCheck and the CRD --------------------------------------------------------


def _crd_paths(schema: Mapping[str, Any], path: str = "") -> Iterator[str]:
    for key, sub in (schema.get("properties") or {}).items():
        yield f"{path}.{key}"
        yield from _crd_paths(sub, f"{path}.{key}")


def _check_paths(value: Mapping[str, Any], path: str = "") -> Iterator[str]:
    for key, sub in value.items():
        yield f"{path}.{key}"
        if isinstance(sub, dict) and key not in ("nodeSelector",):
            yield from _check_paths(sub, f"{path}.{key}")


def test_default_check_fields_are_thpcheck_spec_fields() -> None:
    fields = {k: v for k, v in VALUES["defaultCheck"].items() if k not in ("enabled", "name")}
    assert set(_check_paths(fields)) == set(_crd_paths(CHECK_SPEC))


def _crd_defaults(schema: Mapping[str, Any]) -> Any:
    if "default" in schema and not schema.get("properties"):
        return schema["default"]
    return {key: value for key, sub in (schema.get("properties") or {}).items()
            if (value := _crd_defaults(sub)) is not None} or None


def test_default_check_is_the_crd_default_spec() -> None:
    """Apart from the opt-in knobs the CRD has no default for, the chart's check is what an
    empty ThpCheck spec means: every node, labels only."""
    fields = {k: v for k, v in VALUES["defaultCheck"].items() if k not in ("enabled", "name")}
    expected = _crd_defaults(CHECK_SPEC)
    assert {k: v for k, v in fields.items() if k in expected} == expected
    assert fields["nodeSelector"] == {} and fields["schedule"] == {"interval": ""}
