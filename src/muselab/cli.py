"""`muselab ...`: parses, calls the API, prints. User errors end in one line on stderr and exit 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

from muselab import __version__
from muselab.core.errors import ConfigError, ControlError, MuselabError

EXIT_USER_ERROR = 2
EXIT_PARTLY_REFUSED = 3  # generate: done, but a safety check refused some items


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and the same exit status as our own errors)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"muselab: error: {message} (see `{self.prog} --help`)\n")


def _field_type(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    return annotation


def _fixed_count(field: Any) -> int | None:
    """N when a list control must hold exactly N values (min_length == max_length)."""
    bounds = [getattr(m, attr, None) for m in field.metadata for attr in ("min_length", "max_length")]
    bounds = [b for b in bounds if b is not None]
    return bounds[0] if len(bounds) == 2 and bounds[0] == bounds[1] else None


def _help(description: str | None, facts: str) -> str:
    text = (description or "").rstrip()
    return f"{text} ({facts})".strip().replace("%", "%%")  # argparse formats help with %


def _noting(action: type[argparse.Action], note: str) -> type[argparse.Action]:
    """`action`, printing a one-line note on stderr when the option is used (deprecated spellings)."""

    class Noting(action):  # type: ignore[valid-type,misc]
        def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
            print(f"muselab: note: {note}", file=sys.stderr)
            super().__call__(parser, namespace, values, option_string)

    return Noting


def add_control_options(parser: argparse.ArgumentParser, controls: type[BaseModel]) -> None:
    """Derive CLI options from a controls model: one name, one range, one help text (DESIGN.md). Each
    option's help ends with its default, range and choices; other names of a control (`aliases` on the
    field) are flags too, the deprecated ones hidden and printing a note when used."""
    from muselab.core.controls import alias_names, deprecated_aliases, deprecation_note, field_choices
    from muselab.describe import field_facts

    group = parser.add_argument_group("generation controls")
    for name, field in controls.model_fields.items():
        flag = "--" + name.replace("_", "-")
        old = deprecated_aliases(field)
        flags = [flag, *("--" + a.replace("_", "-") for a in alias_names(field, name) if a not in old)]
        kind = _field_type(field.annotation)
        facts = field_facts(field)
        options: dict[str, Any]
        if kind is bool:
            options = {"action": argparse.BooleanOptionalAction}
        elif get_origin(kind) is list and _fixed_count(field):
            # a list of exactly N values is given at once: `--interpolate A B`
            count = _fixed_count(field)
            options = {"action": "store", "nargs": count,
                       "metavar": tuple(chr(ord("A") + i) for i in range(count))}
        elif get_origin(kind) is list:
            options = {"action": "append"}
            facts = "repeatable; " + facts
        else:
            choices = field_choices(field)
            options = {"action": "store", "type": kind if kind in (int, float) else str}
            options.update({"choices": choices} if choices else {"metavar": name.upper()})
        group.add_argument(*flags, dest=name, default=argparse.SUPPRESS, help=_help(field.description, facts),
                           **options)
        base = parser._registry_get("action", options["action"], options["action"])
        for alias in old:
            group.add_argument("--" + alias.replace("_", "-"), dest=name, default=argparse.SUPPRESS,
                               help=argparse.SUPPRESS, **{**options, "action": _noting(base, deprecation_note(alias, name))})
        if get_origin(kind) is list and not _fixed_count(field):
            group.add_argument(f"{flag}-file", dest=f"{name}__file", default=argparse.SUPPRESS, metavar="FILE",
                               help=f"read {flag} values from a UTF-8 file, one per line (default: none)")
        elif kind is str and isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("file_option"):
            group.add_argument(f"{flag}-file", dest=f"{name}__file", default=argparse.SUPPRESS, metavar="FILE",
                               help=f"read {flag} from a UTF-8 file, the whole of it (default: none)")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="muselab", description="Train generative models on your own material and generate "
                     "new text, images and sound from them.")
    parser.add_argument("--version", action="version", version=f"muselab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    recipes = sub.add_parser("recipes", help="list the recipes; `muselab recipes NAME` describes one")
    recipes.add_argument("name", nargs="?", help="a recipe: print its data, config fields, presets and controls")

    train = sub.add_parser("train", help="train a recipe on data into a run directory")
    train.add_argument("recipe", nargs="?", help="recipe name (see `muselab recipes`); optional with --resume")
    train.add_argument("--data", help="a file, a folder, or builtin:NAME (default: the recipe's built-in data)")
    train.add_argument("--out", help="run directory to create (or continue with --resume); required to train")
    train.add_argument("--preset", default="default", help="tiny (tests), default (this CPU), base (GPU)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="set any config field, e.g. --set model.n_layer=6 (repeatable)")
    train.add_argument("--config", help="a TOML file of config fields, or a run's config.json to reproduce it")
    train.add_argument("--seed", type=int, help="seed for weights, data order and dropout")
    train.add_argument("--max-steps", type=int, help="optimizer steps (overrides train.max_steps)")
    train.add_argument("--max-minutes", type=float, help="wall-clock budget; the schedule fits itself to it")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace a run that --out already holds")
    train.add_argument("--init-from", metavar="RUN", help="start from another run's weights (transfer learning)")
    train.add_argument("--freeze", action="append", default=[], metavar="PATTERN",
                       help="freeze parameters whose names match this glob, e.g. 'blocks.0.*' (repeatable)")
    train.add_argument("--skip-bad-files", action="store_true",
                       help="leave unreadable files out of the data and count them (data.skip_bad_files=true; "
                            "recipes that read folders of images or audio)")
    train.add_argument("--print-config", action="store_true",
                       help="print the resolved config as TOML (for --config) and exit without training")
    train.add_argument("--dry-run", action="store_true",
                       help="prepare the data, apply the default preset's sizing rule, time a few steps, print the "
                            "config and the estimated steps, and exit without training or writing anything")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    generate = sub.add_parser("generate", help="generate from a trained run (`muselab generate RUN --help` "
                              "lists its controls)", add_help=False)
    generate.add_argument("run", nargs="?", help="run directory")
    generate.add_argument("--recipe", help="with --help: show a recipe's controls without a run")
    generate.add_argument("-h", "--help", action="store_true", help="show the run's controls")

    evaluate = sub.add_parser("evaluate", help="compute metrics for a run and write RUN/eval.json")
    evaluate.add_argument("run", help="run directory")
    evaluate.add_argument("--data", help="evaluate on other data (default: the data it was trained on)")
    evaluate.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N, mps")
    evaluate.add_argument("--set", dest="overrides", action="append", default=[], metavar="eval.KEY=VALUE",
                          help="change an evaluation setting for this call, e.g. --set eval.vocoder=RUN (audio-tts)")

    export = sub.add_parser(
        "export", help="write a run's network as an ONNX or TorchScript file with a JSON sidecar",
        description="Write the plain network of a run whose recipe has one (a language model's decoding step, a "
                    "GAN's generator, a VAE's decoder, a vocoder) as an ONNX or TorchScript file, checked against "
                    "torch, and FILE.json beside it: input and output names, shapes and dtypes, what to pair it "
                    "with, and the run's provenance. Outputs of the file skip muselab's moderation, memorization "
                    "checks and watermarks.")
    export.add_argument("run", help="run directory")
    export.add_argument("--format", choices=["onnx", "torchscript"], default="onnx",
                        help="onnx (needs muselab[export]) or torchscript (default: onnx)")
    export.add_argument("--out", metavar="FILE", help="the file to write (default: RUN/model.onnx or RUN/model.pt)")
    export.add_argument("--opset", type=int, metavar="N",
                        help="ONNX opset, 18 or newer (default: 18; onnx only)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    moderate = sub.add_parser(
        "moderate", help="check a text against the moderation policy; prints a JSON verdict",
        description="Check a text against the moderation policy and print one JSON line: allowed, categories, "
                    "matches, redacted, warnings. Exit status: 0 allowed, 1 blocked, 2 a usage or file error.")
    moderate.add_argument("text", nargs="?", help="the text to check (or --file)")
    moderate.add_argument("--file", help="check this UTF-8 text file instead")
    moderate.add_argument("--policy", metavar="FILE.toml", help="a policy file on top of (or instead of) the default")

    detect = sub.add_parser(
        "detect", help="look for muselab's watermark and manifest in files; one JSON line per file",
        description="For each file print one JSON line: watermark (true/false), confidence, manifest (embedded, "
                    "or the sidecar FILE.json; null when there is none) and a note. A file that cannot be read "
                    "gets a line with \"error\". Exit status: 0 when every file was read (marked or not), 2 when "
                    "any could not be.")
    detect.add_argument("files", nargs="+", metavar="FILE", help="images, audio or text files muselab wrote")

    info = sub.add_parser("info", help="describe a run directory")
    info.add_argument("run", help="run directory")
    info.add_argument("--json", action="store_true", help="print JSON")

    serve = sub.add_parser(
        "serve", help="serve runs over HTTP: a REST API, a web page and a gallery (needs muselab[serve])",
        description="Serve trained runs: a REST API (OpenAPI at /docs), a web page at / and a gallery of every "
                    "generation. Every request goes through the generation pipeline (moderation, guards, "
                    "manifests, watermarks). Listens on 127.0.0.1 unless --host says otherwise.")
    serve.add_argument("runs", nargs="+", metavar="RUN", help="run directories to serve (each becomes a model named "
                       "after its folder)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes, each with the models loaded "
                       "(default: 1)")
    serve.add_argument("--api-key", help="require this key (X-API-Key or Authorization: Bearer) on every API call; "
                       "default: none (or $MUSELAB_API_KEY)")
    serve.add_argument("--gallery", default="muselab-gallery", help="folder of the gallery (SQLite + files; "
                       "default: ./muselab-gallery)")
    serve.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                       help="allow browser calls from this origin (repeatable; default: none, CORS off)")
    serve.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N, mps")
    serve.add_argument("--time-limit", type=float, default=120.0, help="seconds a generation may run before it "
                       "is stopped (default: 120)")
    serve.add_argument("--queue", type=int, default=8, help="requests waiting per model before 429 (default: 8)")
    serve.add_argument("--max-tokens", type=int, default=1024, help="new tokens per text sample (default: 1024)")
    serve.add_argument("--max-images", type=int, default=64, help="images per request (default: 64)")
    serve.add_argument("--max-audio-seconds", type=float, default=60.0, help="seconds of sound per request "
                       "(default: 60)")
    serve.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in MB (default: 20)")

    demo = sub.add_parser("demo", help="train, generate and evaluate on built-in data; write an HTML report")
    demo.add_argument("--out", default="muselab-demo", help="output folder (default: ./muselab-demo)")
    demo.add_argument("--preset", default="default", help="tiny runs in seconds; default gives a good result")
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")
    return parser


def _cmd_recipes(args: argparse.Namespace) -> int:
    from muselab.core.registry import get_recipe, iter_recipes

    if args.name:
        from muselab.describe import describe_recipe

        print(describe_recipe(get_recipe(args.name)))
        return 0

    for recipe in iter_recipes():
        print(f"{recipe.name:<16} {recipe.summary}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from muselab import api

    overrides = list(args.overrides)
    if args.skip_bad_files:
        _check_skip_bad_files(args)
        overrides.append("data.skip_bad_files=true")
    if args.print_config:
        if not args.recipe:
            raise ConfigError("--print-config needs a recipe, e.g. `muselab train text-lm --print-config`")
        from muselab.core.toml_out import dumps_toml

        cfg = api.resolve_config(args.recipe, preset=args.preset, config_file=args.config, overrides=overrides,
                                 seed=args.seed, max_steps=args.max_steps, max_minutes=args.max_minutes)
        values = cfg.model_dump(mode="json")
        preset = f" --preset {args.preset}" if _unset_by_preset(values, args.recipe) else ""
        header = (f"{args.recipe} config (preset {args.preset}); train with it: muselab train {args.recipe}{preset} "
                  "--config FILE.toml --out RUN")
        if preset:  # TOML has no null: the preset keeps those fields unset
            header += f"\n(--preset {args.preset} keeps the fields marked (unset) unset)"
        print(dumps_toml(values, header=header), end="")
        return 0
    if args.dry_run:
        if not args.recipe:
            raise ConfigError("--dry-run needs a recipe, e.g. `muselab train text-lm --data FILE --dry-run`")
        _print_plan(api.plan(args.recipe, args.data, preset=args.preset, config_file=args.config,
                             overrides=overrides, seed=args.seed, max_steps=args.max_steps,
                             max_minutes=args.max_minutes))
        return 0
    if not args.out:
        raise ConfigError("name the run directory to train into: --out RUN")
    result = api.train(args.recipe, args.data, args.out, preset=args.preset, config_file=args.config,
                       overrides=overrides, seed=args.seed, max_steps=args.max_steps,
                       max_minutes=args.max_minutes, resume=args.resume, overwrite=args.overwrite,
                       init_from=args.init_from, freeze=args.freeze, quiet=args.quiet)
    if result.best_val_loss is not None:
        val = (f"; validation loss: best {result.best_val_loss:.4f} (step {result.best_step}, kept), "
               f"last {result.final_val_loss:.4f}")
    else:
        val = "; no validation loss: the last weights are kept"
    skipped = f"; {result.bad_steps} non-finite steps skipped" if result.bad_steps else ""
    stopped = {"time": " (time budget)", "patience": " (no better validation: patience)"}.get(result.stopped_by, "")
    print(f"trained {result.step} steps{stopped} in {result.elapsed_s / 60:.1f} min{val}{skipped}; run: {args.out}",
          file=sys.stderr)
    return 0


def _print_plan(plan: Any) -> None:
    from muselab.core.toml_out import dumps_toml

    train = plan.config.train
    print(f"recipe: {plan.recipe}; data: {plan.data.get('source', plan.data.get('spec'))}")
    sizing = plan.sizing
    if sizing:
        inputs = ", ".join(f"{k} {v}" for k, v in sizing["inputs"].items())
        print(f"sizing rule: row {sizing['rule']} for {inputs}")
        print("  chose: " + ", ".join(f"{k}={v}" for k, v in sizing["chose"].items()))
        if sizing["overridden"]:
            print("  overridden by your settings: " + ", ".join(sizing["overridden"]))
    else:
        print("sizing rule: none (only the default preset sizes itself to the data)")
    print(f"parameters: {plan.parameters:,}; precision: {plan.precision}")
    end = f"{train.max_minutes:g} minutes" if train.max_minutes else f"train.max_steps {train.max_steps}"
    steps = f"about {plan.estimated_steps:,}" if plan.estimated_steps is not None else "unknown"
    print(f"a training step: {plan.step_s * 1000:.0f} ms (timed here, now); steps: {steps} ({end})")
    print(dumps_toml(plan.config.model_dump(mode="json"), header="the config it would train with"), end="")


def _unset_by_preset(values: dict[str, Any], recipe: str) -> bool:
    """Whether a field the config leaves unset (None) is set by default: a TOML file cannot say null."""
    from muselab import api

    default = api.resolve_config(recipe).model_dump(mode="json")
    return any(value is None and default[section][key] is not None
               for section, fields in values.items() for key, value in fields.items())


def _check_skip_bad_files(args: argparse.Namespace) -> None:
    """--skip-bad-files only for recipes whose data config has it; elsewhere one line saying why not."""
    from muselab.core.registry import get_recipe

    name = args.recipe
    if not name and args.resume and args.out:
        from muselab.core.rundir import RunDir

        name = RunDir(args.out).read_config()["recipe"]
    if not name:
        return
    data = get_recipe(name).config_class.model_fields.get("data")
    section = data.annotation if data else None
    if not (isinstance(section, type) and issubclass(section, BaseModel) and "skip_bad_files" in section.model_fields):
        raise ConfigError(f"--skip-bad-files does not apply to {name}: its data stops at the first bad file or line "
                          "and names it; fix or remove that")


def _generate_parser(recipe: Any, prog: str) -> argparse.ArgumentParser:
    """The options of `muselab generate` for one recipe: the common ones, then its controls model's."""
    parser = _Parser(prog=prog, description=f"Generate from {_article(recipe.name)} {recipe.name} run. Exit status: "
                     f"0 done, {EXIT_USER_ERROR} a usage or data error, {EXIT_PARTLY_REFUSED} done but some items were "
                     "refused by a safety check (listed on stderr and in the manifests).")
    where = ("a folder for the files, with a manifest per file (required: this recipe writes files)"
             if recipe.capabilities.writes_files else
             "write to this file or folder (with a manifest per file) instead of printing (default: print)")
    parser.add_argument("--out", help=where)
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files (default: off)")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N, mps "
                        "(default: auto)")
    parser.add_argument("--on-refused", choices=["skip", "fail"], default="skip",
                        help="an item refused by moderation or the memorization guard: skip it and go on, or "
                             "fail the whole request (default: skip; choices: skip, fail)")
    add_control_options(parser, recipe.controls_class)
    return parser


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _cmd_generate(args: argparse.Namespace, rest: Sequence[str]) -> int:
    from muselab import api
    from muselab.core.registry import get_recipe, recipe_names
    from muselab.core.results import SequenceResult
    from muselab.core.runtime import resolve_device

    if args.recipe and not args.run:
        if args.help:
            _generate_parser(get_recipe(args.recipe), f"muselab generate --recipe {args.recipe}").print_help()
            return 0
        if get_recipe(args.recipe).shipped_run() is None:
            raise ControlError("--recipe only shows a recipe's controls with --help; generate from a trained run: "
                               "muselab generate RUN [controls]")
        args.run = f"builtin:{args.recipe}"  # the run the recipe ships serves when none is named
    if not args.run:
        print("usage: muselab generate RUN [controls] [--out FILE_OR_DIR]; `muselab generate RUN --help` lists "
              "the controls of that run, `muselab generate --recipe NAME --help` those of a recipe (one of "
              f"{', '.join(recipe_names())})", file=sys.stderr)
        return 0 if args.help else EXIT_USER_ERROR
    if args.run.startswith("builtin:"):  # a run that ships with muselab
        args.run = str(api.shipped_run(args.run))
    if args.help:  # the controls come from the run's recipe: read config.json alone, not the weights
        from muselab.core.rundir import RunDir

        recipe = get_recipe(RunDir(args.run).read_config()["recipe"])
        _generate_parser(recipe, f"muselab generate {args.run}").print_help()
        return 0
    run = api.load(args.run, device="cpu")
    parser = _generate_parser(run.recipe, f"muselab generate {args.run}")
    options = _read_list_files(vars(parser.parse_args(rest)), run.recipe.controls_class)
    out, overwrite = options.pop("out"), options.pop("overwrite")
    device, on_refused = options.pop("device"), options.pop("on_refused")
    run.model.to(resolve_device(device))
    if out is None and run.recipe.capabilities.writes_files:
        raise ControlError(f"a {run.recipe.name} run writes files: add --out FOLDER")
    streaming = (out is None and run.recipe.capabilities.streams_text and options.get("stream", True)
                 and options.get("num_samples", 1) == 1)

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    # the run shows the moderated text as it grows, prompt first (nothing at all when the prompt is blocked)
    result = run.generate(on_text=show if streaming else None, on_refused=on_refused, **options)
    for warning in result.warnings:
        print(f"muselab: warning: {warning}", file=sys.stderr)
    if out:
        for path in result.save(out, overwrite):
            print(path)
    elif isinstance(result, SequenceResult):
        print("\n".join(result.lines(with_scores=result.controls.get("n_best", 1) > 1)))
    elif streaming:
        print()
    else:
        for index, text in enumerate(result.items):
            if len(result.items) > 1:
                print(f"----- sample {index + 1} of {len(result.items)} -----")
            print(text)
    if result.refused:
        counts: dict[str, int] = {}
        for entry in result.refused:
            counts[entry.category] = counts.get(entry.category, 0) + 1
        shown = ", ".join(f"{name}: {count}" for name, count in counts.items())
        print(f"muselab: {len(result.refused)} of {result.requested} items refused ({shown}); the others were "
              "generated" + (" (the manifest lists each refusal)" if out else ""), file=sys.stderr)
        for entry in result.refused:
            print(f"muselab: refused item {entry.index + 1}: {entry.reason} ({entry.check}, {entry.category})",
                  file=sys.stderr)
        return EXIT_PARTLY_REFUSED
    return 0


def _read_list_files(options: dict[str, Any], controls: type[BaseModel]) -> dict[str, Any]:
    """`--input-file F` adds F's non-empty lines to `--input` (a list control); `--text-file F` sets `--text`
    to F's whole text (a text control: giving both is an error)."""
    from muselab.core.errors import DataError
    from muselab.data.text import read_text_file

    for key in [k for k in options if k.endswith("__file")]:
        path = Path(options.pop(key))
        name = key[:-6]
        flag = "--" + name.replace("_", "-")
        if not path.is_file():
            raise DataError(f"{flag}-file '{path}' does not exist")
        text = read_text_file(path)
        if _field_type(controls.model_fields[name].annotation) is str:
            if name in options:
                raise ControlError(f"give {flag} or {flag}-file, not both")
            options[name] = text
        else:
            options[name] = [*options.get(name, []), *(line.strip() for line in text.splitlines() if line.strip())]
    return options


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from muselab import api

    metrics = api.evaluate(args.run, args.data, device=args.device, overrides=args.overrides)
    table = Table(title=f"{args.run} (written to {Path(args.run) / 'eval.json'})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from muselab import api

    done = api.export(args.run, args.format, args.out, opset=args.opset, overwrite=args.overwrite)
    check = ("not checked (onnxruntime is not installed)" if done.max_abs_diff is None
             else f"max abs difference from torch {done.max_abs_diff:.2g}")
    print(f"wrote {done.path} and {done.sidecar.name} ({check})")
    return 0


def _cmd_moderate(args: argparse.Namespace) -> int:
    from muselab.safety.moderation import moderate_command

    line, status = moderate_command(args.text, args.file, args.policy)
    print(line)
    return status


def _cmd_detect(args: argparse.Namespace) -> int:
    from muselab.safety.detect import detect_file

    unreadable = False
    for path in args.files:
        entry = detect_file(path)
        unreadable = unreadable or "error" in entry
        print(json.dumps(entry, ensure_ascii=False), flush=True)
    return EXIT_USER_ERROR if unreadable else 0


def _cmd_info(args: argparse.Namespace) -> int:
    from muselab.core import rundir as files
    from muselab.core.rundir import RunDir

    run = RunDir(args.run)
    saved = run.read_config()
    state = run.read_json(files.TRAINER_STATE_JSON) if (run / files.TRAINER_STATE_JSON).is_file() else {}
    evaluation = run.read_json(files.EVAL) if (run / files.EVAL).is_file() else {}
    sizing = saved.get("sizing") if isinstance(saved.get("sizing"), dict) else None
    summary = {"run": str(run), "recipe": saved["recipe"], "preset": saved.get("preset"),
               "sizing": f"row {sizing.get('rule')}, overridden: {', '.join(sizing.get('overridden') or []) or 'none'}"
               if sizing else None,
               "parameters": saved.get("parameters"), "data": saved.get("data", {}),
               "step": state.get("step"), "elapsed_min": round(state.get("elapsed_s", 0) / 60, 2),
               "final_val_loss": state.get("final_val_loss"), "eval": evaluation,
               "init_from": saved.get("init_from"), "config": saved["config"]}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for key, value in summary.items():
        if key == "config":
            for section, fields in value.items():
                print(f"config.{section}: " + ", ".join(f"{k}={v}" for k, v in fields.items()))
        elif isinstance(value, dict):
            print(f"{key}: " + ", ".join(f"{k}={v}" for k, v in value.items()))
        else:
            print(f"{key}: {value}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import os

    from muselab.serve import run_server

    if args.workers < 1 or not 0 < args.port < 65536 or args.queue < 0 or args.time_limit <= 0:
        raise ConfigError("--workers must be >= 1, --port 1 to 65535, --queue >= 0 and --time-limit above 0")
    limits = {"time_limit_s": args.time_limit, "queue": args.queue, "max_tokens": args.max_tokens,
              "max_images": args.max_images, "max_audio_seconds": args.max_audio_seconds,
              "max_upload_bytes": int(args.max_upload_mb * 1_000_000)}
    run_server(args.runs, host=args.host, port=args.port, workers=args.workers,
               api_key=args.api_key or os.environ.get("MUSELAB_API_KEY") or None, gallery=args.gallery,
               cors=args.cors_origin, device=args.device, limits=limits)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from muselab.demo import run_demo

    report = run_demo(Path(args.out), preset=args.preset, overwrite=args.overwrite)
    print(f"demo finished; open the report: {report}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "generate" and args.recipe and args.run:
        # With --recipe there is no run: the "run" argparse found is the value of a control (--mel FILE)
        tokens = list(sys.argv[1:] if argv is None else argv)
        tokens = tokens[tokens.index("generate") + 1:]
        rest, skip = [], False
        for token in tokens:
            if skip or token in ("-h", "--help") or token.startswith("--recipe="):
                skip = False
                continue
            if token == "--recipe":
                skip = True
                continue
            rest.append(token)
        args.run = None
    if args.command != "generate" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    commands = {"recipes": _cmd_recipes, "train": _cmd_train, "evaluate": _cmd_evaluate, "export": _cmd_export,
                "moderate": _cmd_moderate, "detect": _cmd_detect, "info": _cmd_info, "demo": _cmd_demo,
                "serve": _cmd_serve}
    # The library logs its notes (resampled input, skipped clips...); the CLI shows them on stderr
    notes = logging.StreamHandler(sys.stderr)
    notes.setFormatter(logging.Formatter("muselab: note: %(message)s"))
    library, level = logging.getLogger("muselab"), logging.getLogger("muselab").level
    library.addHandler(notes)
    library.setLevel(logging.INFO)
    try:
        if args.command == "generate":
            return _cmd_generate(args, rest)
        if args.command is None:
            parser.print_help()
            return EXIT_USER_ERROR
        return commands[args.command](args)
    except MuselabError as err:
        print(f"muselab: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("muselab: interrupted (a training run keeps its last checkpoint; continue it with --resume)",
              file=sys.stderr)
        return 130
    finally:
        library.removeHandler(notes)
        library.setLevel(level)
