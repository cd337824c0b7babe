"""Checks that need no model: a run's names and numbers, and recipe files.

``plan_run`` resolves every name and number of a ``RunRequest``: methods, recipes and
``--set`` keys, profile, prompt sets, attacks, utility tasks, judges, over-refusal set,
``--limit``, device and dtype. A typo thus stops the run before the model or any prompt set loads.
``recipe_problems`` backs ``nestbench validate`` and lists every problem of a recipe at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nestbench.config import ConfigError, coerce_value, read_recipe, unknown_key_message
from nestbench.errors import NestbenchError
from nestbench.profiles import Profile, resolve_profile

if TYPE_CHECKING:
    from nestbench.evaluation import EvalSettings
    from nestbench.methods import Method
    from nestbench.runner import RunRequest


class RecipeError(ConfigError):
    """A recipe file has one or more problems; ``problems`` lists each of them."""

    def __init__(self, path: Path, problems: list[str]):
        self.path = path
        self.problems = problems
        listed = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"recipe {path} has {len(problems)} problem(s):\n{listed}")


@dataclass
class RunPlan:
    """The resolved profile, configured methods and evaluation settings of one run."""

    profile: Profile
    methods: dict[str, Method]
    settings: EvalSettings


def plan_run(request: RunRequest) -> RunPlan:
    """Resolve and check every name and number in ``request`` without loading a model or data.

    Raises a ``NestbenchError`` subclass on the first problem found.
    """
    from nestbench.methods import METHODS, build_method
    from nestbench.models import resolve_device, resolve_dtype
    from nestbench.prompts import PROMPT_SETS

    for name in request.methods:
        METHODS.get(name)
    check_limit(request.limit)
    check_override_scopes(request.overrides, request.methods)
    profile = resolve_profile(request.profile, epochs=request.epochs, max_new_tokens=request.max_new_tokens)
    methods = {name: build_method(name, overrides_for(name, request.overrides)) for name in request.methods}
    # Set names are checked even where a prompt file replaces the set, so a typo never passes unseen.
    for set_name in (request.harmful_set, request.benign_set, request.eval_set):
        PROMPT_SETS.get(set_name)
    settings = eval_settings(request, profile)
    resolve_dtype(request.dtype, resolve_device(request.device))
    return RunPlan(profile, methods, settings)


def check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(
            f"invalid --limit {limit!r}: must be a whole number >= 1. Leave --limit out to evaluate every prompt"
        )


def eval_settings(request: RunRequest, profile: Profile) -> EvalSettings:
    """Build the evaluation settings of a run from its profile, ``--limit``, attacks and tasks."""
    from nestbench.evaluation import EvalSettings

    kwargs: dict[str, Any] = dict(
        max_gen_toks=profile.max_new_tokens,
        batch_size=profile.eval_batch_size,
        harmful_limit=None,
        attack_limit=profile.attack_prompts,
        utility_limit=request.limit if request.limit is not None else profile.utility_limit,
    )
    if request.attacks is not None:
        kwargs["attacks"] = request.attacks
    if request.utility_tasks is not None:
        kwargs["utility_tasks"] = request.utility_tasks
    if not request.judges:
        raise ConfigError("no judge given; name at least one, for example judges=('keyword',)")
    kwargs.update(
        judge=request.judges[0],
        extra_judges=request.judges[1:],
        judge_models=request.judge_models,
        judge_device=request.device,
        over_refusal_set=request.over_refusal_set,
        over_refusal_limit=request.limit,
    )
    return EvalSettings(**kwargs)


def overrides_for(method: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Select the ``--set`` keys for one method: ``method.key`` is scoped, a bare ``key`` applies to all."""
    selected = {}
    for key, value in overrides.items():
        scope, dot, bare = key.partition(".")
        if dot:
            if scope == method:
                selected[bare] = value
        elif method != "none":
            selected[key] = value
    return selected


def check_override_scopes(overrides: dict[str, Any], methods: tuple[str, ...]) -> None:
    """Reject ``--set`` keys that cannot apply as written.

    ``--set METHOD.key=...`` for a method that this run does not tune would be ignored. A bare
    key that only some of the run's methods have would fail on the others, so the error gives
    the scoped form for the methods that have it.
    """
    from nestbench.methods import METHODS

    tuned = [name for name in methods if name != "none"]
    for key, value in overrides.items():
        scope, dot, _ = key.partition(".")
        if not dot and len(tuned) > 1:
            owners = [name for name in tuned if key in _config_keys(METHODS.get(name).config_class)]
            if owners and len(owners) < len(tuned):
                scoped = " ".join(f"--set {name}.{key}={value}" for name in owners)
                others = [name for name in tuned if name not in owners]
                verb = "has" if len(others) == 1 else "have"
                raise ConfigError(
                    f"--set {key}={value} applies to every method in this run, but {', '.join(others)} {verb} no key "
                    f"{key!r}. Scope it to the method(s) that have it: {scoped}"
                )
        if dot and scope not in methods:
            close = difflib.get_close_matches(scope, list(methods), n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"--set {key}={value} names method {scope!r}, which this run does not use.{hint} "
                f"Methods in this run: {', '.join(methods)}. Use --set METHOD.KEY=VALUE with one of them, "
                "or a bare KEY=VALUE for every method"
            )


def _config_keys(config_class: type) -> set[str]:
    return {field.name for field in dataclasses.fields(config_class) if field.init}


def resolve_recipe_path(recipe: str | Path) -> Path:
    """Return the recipe file for ``recipe``: an existing path, or the recipe of a registered method."""
    from nestbench.methods import METHODS
    from nestbench.methods.base import recipe_path

    path = Path(recipe)
    if path.is_file():
        return path
    if str(recipe) in METHODS:
        return recipe_path(str(recipe))
    close = difflib.get_close_matches(str(recipe), list(METHODS), n=1, cutoff=0.6)
    hint = f" Did you mean method {close[0]!r}?" if close else ""
    raise ConfigError(
        f"recipe {str(recipe)!r} not found: it is neither a file nor a method name.{hint} "
        f"Pass a recipe file such as methods/nest.yaml, or one of the methods {', '.join(METHODS)}"
    )


def recipe_problems(path: Path, method: str | None = None) -> list[str]:
    """Return every problem in a recipe file for ``method`` (default: the file's stem), empty when valid.

    Each value is checked for its type and, alone on top of the defaults, for its range, so
    one bad value does not hide another. Checks that combine several values run only when
    each value is valid on its own.
    """
    from nestbench.methods import METHODS

    method = method or path.stem
    if method not in METHODS:
        return [
            f"{METHODS.unknown_message(method)} The method comes from the file name {path.name!r}; "
            "pass --method NAME for a recipe file with another name"
        ]
    try:
        values = read_recipe(path)
    except ConfigError as err:
        return [str(err)]
    config_class = METHODS.get(method).config_class
    fields = _config_keys(config_class)
    hints = typing.get_type_hints(config_class)
    origin = f"recipe {path}"
    problems = [unknown_key_message(key, fields, origin) for key in sorted(set(values) - fields)]

    checked: dict[str, Any] = {}
    for key in sorted(set(values) & fields):
        try:
            value = coerce_value(key, values[key], hints[key], origin)
            config_class(**{key: value})
        except (NestbenchError, TypeError, ValueError) as err:
            problems.append(str(err))
            continue
        checked[key] = value
    if not problems:
        try:
            config_class(**checked)
        except (NestbenchError, TypeError, ValueError) as err:
            problems.append(str(err))
    return problems


def check_recipe(recipe: str | Path, method: str | None = None) -> Path:
    """Raise ``RecipeError`` listing every problem of ``recipe``; return its path when it is valid."""
    path = resolve_recipe_path(recipe)
    problems = recipe_problems(path, method)
    if problems:
        raise RecipeError(path, problems)
    return path
