"""The workflow catalog: which Segmind workflows exist, their inputs, prices and durations.

The built-in catalog (``catalog.json`` beside this module) holds the five seed workflows.
Users add or override workflows with a JSON file of the same shape named by the
``SEGMIND_WORKFLOWS_FILE`` environment variable. Any raw workflow id of the form
``<24 hex>-v<N>`` resolves too, to a workflow whose inputs are passed through unchecked.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

WORKFLOWS_FILE_ENV = "SEGMIND_WORKFLOWS_FILE"
BUILTIN_CATALOG = Path(__file__).with_name("catalog.json")

#: A Segmind workflow id: 24 lowercase hex digits (a Mongo-style object id) and a version.
WORKFLOW_ID_PATTERN = r"^[0-9a-f]{24}-v[0-9]{1,6}$"
_WORKFLOW_ID_RE = re.compile(WORKFLOW_ID_PATTERN)
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

InputType = Literal["string", "integer", "uri"]
OutputType = Literal["image", "video", "audio", "text", "json", "file"]


class CatalogError(ValueError):
    """The catalog file cannot be read or is not a valid catalog."""


class UnknownWorkflowError(LookupError):
    """Neither a catalog name nor a raw workflow id.

    Attributes:
        workflow: what was asked for.
    """

    def __init__(self, workflow: str) -> None:
        self.workflow = workflow
        super().__init__(
            f"unknown workflow {workflow[:80]!r}: not a catalog name and not a workflow id "
            "of the form <24 hex>-v<N>"
        )


class InputSpec(BaseModel):
    """One input of a workflow, as Segmind's API page lists it (all are optional)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    type: InputType
    title: str | None = None
    default: str | int | None = None

    @model_validator(mode="after")
    def _default_matches_type(self) -> InputSpec:
        if self.default is None:
            return self
        if self.type == "integer" and not isinstance(self.default, int):
            raise ValueError(f"input {self.name!r}: an integer input needs an integer default")
        if self.type in ("string", "uri") and not isinstance(self.default, str):
            raise ValueError(f"input {self.name!r}: a {self.type} input needs a string default")
        return self


class OutputSpec(BaseModel):
    """One output item a workflow produces.

    Segmind's pages do not document outputs; these describe what the simulator produces
    and what a consumer can expect in ``Result.outputs``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    keyname: str = Field(min_length=1)
    type: OutputType


class Workflow(BaseModel):
    """A workflow the service can run.

    Attributes:
        name: the short name producers use (``character-video``); the workflow id for a
            raw id that is not in the catalog.
        workflow_id: Segmind's id, the last path segment of ``POST /workflows/<id>``.
        inputs: the declared inputs, or ``None`` for a raw id (inputs passed through).
        price_usd: Segmind's listed price per run, when known.
        expected_duration_s: Segmind's listed duration, when known.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    workflow_id: str = Field(pattern=WORKFLOW_ID_PATTERN)
    title: str | None = None
    description: str | None = None
    inputs: tuple[InputSpec, ...] | None = None
    outputs: tuple[OutputSpec, ...] = ()
    price_usd: float | None = Field(default=None, ge=0)
    expected_duration_s: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> Workflow:
        if not (_NAME_RE.match(self.name) or self.name == self.workflow_id):
            raise ValueError(
                f"workflow name {self.name!r}: use lowercase letters, digits, '.', '_' and '-'"
            )
        if self.inputs is not None:
            names = [spec.name for spec in self.inputs]
            if len(names) != len(set(names)):
                raise ValueError(f"workflow {self.name!r}: an input is declared twice")
        return self

    @property
    def in_catalog(self) -> bool:
        """Whether the inputs are declared (and so validated); false for a raw id."""
        return self.inputs is not None

    def input(self, name: str) -> InputSpec | None:
        """The declared input called ``name``, or ``None``."""
        return next((spec for spec in self.inputs or () if spec.name == name), None)

    def default_inputs(self) -> dict[str, str | int]:
        """The inputs with their seed defaults, as the seed scripts send them."""
        return {spec.name: spec.default for spec in self.inputs or () if spec.default is not None}


class _CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workflows: list[Workflow]


class Catalog:
    """An immutable set of workflows, looked up by short name or workflow id."""

    def __init__(self, workflows: list[Workflow]) -> None:
        self._by_name: dict[str, Workflow] = {}
        self._by_id: dict[str, Workflow] = {}
        for workflow in workflows:
            # Later entries override earlier ones: a user file can redefine a seed workflow.
            previous = self._by_name.get(workflow.name)
            if previous is not None:
                self._by_id.pop(previous.workflow_id, None)
            self._by_name[workflow.name] = workflow
            self._by_id[workflow.workflow_id] = workflow

    def __iter__(self) -> Iterator[Workflow]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def get(self, name_or_id: str) -> Workflow | None:
        """The catalog entry for a short name or workflow id, without raw-id fallback."""
        return self._by_name.get(name_or_id) or self._by_id.get(name_or_id)

    def resolve(self, name_or_id: str) -> Workflow:
        """The workflow for a short name, a catalogued id, or any raw workflow id.

        Raises:
            UnknownWorkflowError: neither a name in the catalog nor a well-formed id.
        """
        found = self.get(name_or_id)
        if found is not None:
            return found
        if _WORKFLOW_ID_RE.fullmatch(name_or_id):
            return Workflow(name=name_or_id, workflow_id=name_or_id)
        raise UnknownWorkflowError(name_or_id)


def read_catalog_file(path: Path) -> list[Workflow]:
    """The workflows in one catalog JSON file.

    Raises:
        CatalogError: the file is missing, not JSON, or not a valid catalog.
    """
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
        return _CatalogFile.model_validate(raw).workflows
    except OSError as exc:
        raise CatalogError(f"cannot read workflow catalog {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise CatalogError(f"workflow catalog {path} is not JSON: {exc}") from None
    except ValidationError as exc:
        raise CatalogError(f"workflow catalog {path} is not valid:\n{exc}") from None


def load_catalog(environ: Mapping[str, str] | None = None) -> Catalog:
    """The built-in catalog plus the user's file named by ``SEGMIND_WORKFLOWS_FILE``.

    Raises:
        CatalogError: the user's file cannot be read or is invalid.
    """
    env = os.environ if environ is None else environ
    workflows = read_catalog_file(BUILTIN_CATALOG)
    extra = env.get(WORKFLOWS_FILE_ENV, "").strip()
    if extra:
        workflows += read_catalog_file(Path(extra))
    return Catalog(workflows)


@cache
def default_catalog() -> Catalog:
    """The process-wide catalog, read once from the environment."""
    return load_catalog()
