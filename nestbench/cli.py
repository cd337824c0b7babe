"""Command-line interface. It parses options, builds a request and calls the Python API."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from nestbench import __version__
from nestbench.errors import ConfigError, MethodsFailedError, NestbenchError

logger = logging.getLogger("nestbench")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Third-party libraries log a lot at INFO, so only their warnings are shown.
    for name in ("lm-eval", "lm_eval", "transformers", "datasets", "httpx", "urllib3"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)


def _split(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise click.BadParameter("expected a comma-separated list of names")
    return items


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nestbench")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages, including third-party libraries.")
def cli(verbose: bool) -> None:
    """Tune a chat model for safety (NeST or a baseline), attack it, and score it."""
    _setup_logging(verbose)


@cli.command()
@click.option("--method", "methods", default="nest", show_default=True,
              help="Method or comma-separated methods to tune (see `nestbench list methods`); all: every method.")
@click.option("--model", default="smollm2-135m-instruct", show_default=True,
              help="Hub id, local model folder, local .gguf file, or the alias smollm2-135m-instruct.")
@click.option("--device", default="auto", show_default=True, help="auto (cuda, then mps, then cpu), cuda, mps or cpu.")
@click.option("--dtype", default="auto", show_default=True, help="auto, float32, bfloat16 or float16.")
@click.option("--trust-remote-code", is_flag=True, help="Allow model repositories to run their own Python code.")
@click.option("--profile", default="quick", show_default=True,
              help="quick (subsets, 48 new tokens) or full (all prompts, 5 epochs, 512 new tokens).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value, e.g. --set z_threshold=2; prefix with METHOD. to scope it.")
@click.option("--harmful-set", default="donotanswer", show_default=True, help="Harmful prompt set for probing and training.")
@click.option("--benign-set", default="benign-qa", show_default=True, help="Benign prompt set for probing and training.")
@click.option("--eval-set", default="harmbench", show_default=True, help="Harmful prompt set for evaluation.")
@click.option("--train-prompts", type=click.Path(path_type=Path), help="Harmful training prompts from a .jsonl, .csv or .txt file.")
@click.option("--benign-prompts", type=click.Path(path_type=Path), help="Benign training prompts from a .jsonl, .csv or .txt file.")
@click.option("--eval-prompts", type=click.Path(path_type=Path), help="Harmful evaluation prompts from a .jsonl, .csv or .txt file.")
@click.option("--attacks", help="Comma-separated attacks to evaluate (default: every offline attack; "
              "see `nestbench list attacks`).")
@click.option("--utility-tasks", help="Comma-separated utility tasks (default: arc_easy,arc_challenge): "
              "mmlu, hellaswag, piqa, winogrande, boolq, openbookqa, or a built-in lm-eval task name.")
@click.option("--epochs", type=int, help="Training epochs (overrides the profile).")
@click.option("--max-new-tokens", type=int, help="New tokens per response when scoring safety (overrides the profile).")
@click.option("--limit", type=int, help="Evaluate only this many prompts per task; marks the run as limited.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for sampling, training and clustering.")
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
              help="Folder that receives runs/<run_id>/record.json.")
@click.option("--no-baseline-reuse", is_flag=True, help="Evaluate the untouched model again even if a matching record exists.")
@click.option("--judge", default="keyword", show_default=True, help="Judge of the harmful responses (see `nestbench list judges`).")
@click.option("--judges", "judges", help="Comma-separated judges; the first gives the metrics, and each other one is "
              "scored on the same responses with its agreement (percent, Cohen's kappa). Replaces --judge.")
@click.option("--judge-model", "judge_models", multiple=True, metavar="[JUDGE=]MODEL",
              help="Local folder or hub id of a model-based judge's weights; JUDGE= picks the judge when several are used.")
@click.option("--over-refusal", "over_refusal", default="nestbench-benign", show_default=True,
              help="Benign-but-sensitive prompt set for over_refusal (nestbench-benign, xstest), or 'none' to skip.")
@click.option("--table-judge", help="Show this judge's safety metrics in the printed table (default: the first judge).")
@click.option("--resume", "resume_id", metavar="RUN_ID",
              help="Continue run RUN_ID in --results-dir from its last finished stage, with its recorded settings.")
@click.option("--backend", type=click.Choice(["hf", "vllm"]), default="hf", show_default=True,
              help="lm-eval backend for evaluation; vllm falls back to hf with a warning when vLLM is not installed.")
@click.pass_context
def run(ctx, methods, model, device, dtype, trust_remote_code, profile, overrides, harmful_set, benign_set, eval_set,
        train_prompts, benign_prompts, eval_prompts, attacks, utility_tasks, epochs, max_new_tokens, limit, seed, results_dir,
        no_baseline_reuse, judge, judges, judge_models, over_refusal, table_judge, resume_id, backend) -> None:
    """Tune the model with each method, evaluate it next to the untouched model, and print a table."""
    from nestbench.config import parse_overrides
    from nestbench.runner import RunRequest
    from nestbench.runner import run as run_job

    if resume_id is not None:
        from nestbench.resume import resume

        _check_resume_options(ctx)
        _print_records(resume(results_dir, resume_id), results_dir)
        return

    _check_set_or_file(ctx)
    judge_names = _split(judges) or (judge,)
    if table_judge is not None and table_judge not in judge_names:
        raise click.BadParameter(
            f"{table_judge!r} is not among the judges {list(judge_names)}; add it to --judges",
            param_hint="--table-judge",
        )
    request = RunRequest(
        methods=_split(methods),
        model=model,
        device=device,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        profile=profile,
        overrides=parse_overrides(overrides),
        harmful_set=harmful_set,
        benign_set=benign_set,
        eval_set=eval_set,
        train_prompts=train_prompts,
        benign_prompts=benign_prompts,
        eval_prompts=eval_prompts,
        attacks=_split(attacks),
        utility_tasks=_split(utility_tasks),
        seed=seed,
        results_dir=results_dir,
        limit=limit,
        epochs=epochs,
        max_new_tokens=max_new_tokens,
        reuse_baseline=not no_baseline_reuse,
        judges=judge_names,
        judge_models=_judge_models(judge_models, judge_names),
        over_refusal_set=None if over_refusal == "none" else over_refusal,
        backend=backend,
    )
    _print_records(run_job(request), results_dir, table_judge)


# Each prompt file replaces the named set beside it, so giving both would silently drop the set.
_SET_AND_FILE_OPTIONS = (("harmful_set", "train_prompts"), ("benign_set", "benign_prompts"), ("eval_set", "eval_prompts"))


def _check_set_or_file(ctx: click.Context) -> None:
    """Reject a named prompt set and the prompt file that would replace it in the same command."""
    on_command_line = {
        name for pair in _SET_AND_FILE_OPTIONS for name in pair
        if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
    }
    for set_name, file_name in _SET_AND_FILE_OPTIONS:
        if set_name in on_command_line and file_name in on_command_line:
            set_option, file_option = (f"--{name.replace('_', '-')}" for name in (set_name, file_name))
            raise ConfigError(
                f"{set_option} {ctx.params[set_name]!r} and {file_option} {ctx.params[file_name]} both choose "
                f"the same prompts, and the file would replace the set; pass only one of them"
            )


def _check_resume_options(ctx: click.Context) -> None:
    """Reject run options next to --resume, because a resumed run keeps the settings in its record."""
    explicit_options = [
        param.opts[0] for param in ctx.command.params
        if param.name not in ("resume_id", "results_dir")
        and ctx.get_parameter_source(param.name) == click.core.ParameterSource.COMMANDLINE
    ]
    if explicit_options:
        raise click.UsageError(
            f"--resume takes every setting from the run's record, so drop {', '.join(explicit_options)}; "
            "start a new run to change settings"
        )


def _print_records(records, results_dir: Path, table_judge: str | None = None) -> None:
    from nestbench.table import comparison_table, table_caption

    click.echo("")
    click.echo(comparison_table(records, judge=table_judge))
    click.echo("")
    click.echo(table_caption(records, judge=table_judge))
    click.echo(f"records: {', '.join(str(results_dir / 'runs' / r['run_id']) for r in records)}")
    failed = [r for r in records if r["status"] == "failed"]
    if failed:
        raise MethodsFailedError(
            "; ".join(f"method {r['method']} failed: {r['error']['message']}" for r in failed)
            + ". Each record keeps the traceback"
        )


def _judge_models(values: tuple[str, ...], judges: tuple[str, ...]) -> dict[str, str]:
    """Map ``--judge-model`` values to judges; a bare MODEL goes to the only model-based judge."""
    from nestbench.judges import JUDGES

    model_judges = [name for name in judges if name in JUDGES and JUDGES.get(name).needs_model]
    models: dict[str, str] = {}
    for value in values:
        name, sep, model = value.partition("=")
        if not sep:
            if len(model_judges) != 1:
                raise click.BadParameter(
                    f"{value!r} names no judge, but the model-based judges are {model_judges or 'none'}; "
                    "write JUDGE=MODEL",
                    param_hint="--judge-model",
                )
            name, model = model_judges[0], value
        models[name] = model
    return models


@cli.command(name="judge-accuracy")
@click.option("--judge", default="keyword", show_default=True, help="Judge to score on the labelled responses.")
@click.option("--judge-model", help="Local folder or hub id for a model-based judge.")
def judge_accuracy(judge: str, judge_model: str | None) -> None:
    """Score a judge on nestbench's labelled responses and print its accuracy and confusion counts."""
    from nestbench.labelled import format_report, score_judge

    click.echo(format_report(score_judge(judge, judge_model)))


@cli.command()
@click.argument("recipe")
@click.option("--method", help="Method the recipe configures (default: the file name without .yaml).")
def validate(recipe: str, method: str | None) -> None:
    """Check a recipe file (or a method's built-in recipe) without loading a model; list every problem."""
    from nestbench.validate import check_recipe

    path = check_recipe(recipe, method)
    click.echo(f"recipe {path} is valid")


@cli.command(name="list")
@click.argument("what", type=click.Choice(["methods", "prompt-sets", "attacks", "judges", "over-refusal-sets", "profiles"]))
def list_command(what: str) -> None:
    """List the registered methods, prompt sets, attacks, judges, over-refusal sets or profiles."""
    if what == "methods":
        from nestbench.methods import METHODS

        for name in METHODS:
            doc = (METHODS.get(name).__doc__ or "").strip().splitlines()
            click.echo(f"{name:20s} {doc[0] if doc else ''}")
    elif what == "prompt-sets":
        from nestbench.prompts import PROMPT_SETS

        for name in PROMPT_SETS:
            spec = PROMPT_SETS.get(name)
            size = spec.size if spec.size is not None else "online"
            click.echo(f"{name:28s} {spec.role:14s} {size!s:>7}  {spec.license}  {spec.source}")
    elif what == "attacks":
        from nestbench.attacks import ATTACKS, ONLINE_ATTACKS, WHITE_BOX_ATTACKS

        for name in ATTACKS:
            attack = ATTACKS.get(name)
            kind = "offline"
            if name in ONLINE_ATTACKS:
                kind = "online"
            elif name in WHITE_BOX_ATTACKS:
                kind = "white-box"
            click.echo(f"{name:20s} {kind:9s} {attack.description}  [source: {attack.source}]")
    elif what == "judges":
        from nestbench.judges import judge_descriptions

        for name, description in judge_descriptions().items():
            click.echo(f"{name:24s} {description}")
    elif what == "over-refusal-sets":
        from nestbench.over_refusal import OVER_REFUSAL_SETS

        for name in OVER_REFUSAL_SETS:
            spec = OVER_REFUSAL_SETS.get(name)
            size = spec.size if spec.size is not None else "online"
            click.echo(f"{name:20s} {size!s:>7}  {spec.license}  {spec.source}")
    else:
        from nestbench.profiles import PROFILES

        for name in PROFILES:
            click.echo(f"{name:8s} {PROFILES.get(name).to_dict()}")


def _register_report_commands() -> None:
    from nestbench.cli_reports import COMMANDS

    for command in COMMANDS:
        cli.add_command(command)


_register_report_commands()


def main() -> None:
    """Run the CLI; a NestbenchError becomes one error line and its exit code (2)."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("cancelled", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("cancelled; finished stages are kept in the run folder", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except NestbenchError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
