"""The argument layer: each command's flags, `--help`, TOML files, and what the user gave.

A command declares a `Command`: the config sections it reads (all of a section's fields, or
some of them) and flags of its own. `parse(argv, command)` turns `--key value`, `--key=value`,
`--key-with-dashes value` and bare boolean flags (`--resume`) into a validated `Config` whose
`given` records each key the user set and where (`flag`, `file run.toml`, `preset gpt2`).

Rules:
- Defaults, then `--preset`, then `--config FILE` (TOML), then flags: later wins.
- A flag this command does not take is an error that names the command and the closest valid
  flag, also when it is a field of another command (`mygpt2 sample --lr 5`).
- A TOML file may hold settings for several commands (one `run.toml` for train and sample):
  keys of sections this command does not read are skipped with a note on stderr; keys that
  are no config field at all are errors.
"""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mygpt2.config import (
    FALSE_WORDS,
    PRESETS,
    SECTIONS,
    TRUE_WORDS,
    Config,
    apply_preset,
    apply_values,
    closest,
    field_sections,
    field_type,
    flatten,
    section_fields,
    validate,
)
from mygpt2.errors import MyGPT2Error, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

ALL = None  # every field of a section


@dataclass(frozen=True)
class Command:
    """What one subcommand accepts: config sections (all fields, or a tuple of names) and
    extra flags of its own (name -> help)."""

    name: str
    usage: str
    sections: dict[str, tuple[str, ...] | None]
    extra: dict[str, str] = field(default_factory=dict)
    # defaults of this command's own where they differ from the config's (the demo's), as
    # help shows them
    defaults: dict[str, str] = field(default_factory=dict)

    def fields(self) -> set[str]:
        """Every config field this command takes as a flag."""
        out: set[str] = set()
        for section, names in self.sections.items():
            out |= {f.name for f in section_fields(section)} if names is None else set(names)
        return out


@dataclass
class Args:
    """A parsed command line: the validated config, extra flags given, positional arguments."""

    config: Config
    extras: dict[str, str]
    positional: list[str]


def _normalise(key: str, known: set[str]) -> str:
    underscored = key.replace("-", "_")
    return underscored if underscored in known else key


def _unknown_flag(key: str, command: Command, accepted: set[str]) -> MyGPT2Error:
    sections = field_sections()
    hint = closest(key, sorted(accepted))
    if key in sections:  # a real setting, but for another command
        return UsageError(
            f"mygpt2 {command.name} does not take --{key} (a [{sections[key]}] setting of "
            f"other commands).{hint} Run 'mygpt2 {command.name} --help' for its flags."
        )
    return UsageError(
        f"unknown flag '--{key}' for mygpt2 {command.name}.{hint} "
        f"Run 'mygpt2 {command.name} --help' to list its flags."
    )


def _takes_preset(command: Command) -> bool:
    return command.sections.get("model", ()) is ALL


def split_flags(argv: list[str], command: Command) -> tuple[dict[str, str], list[str]]:
    """`--key value`, `--key=value` and bare boolean `--flag` into a dict; the rest positional."""
    fields = command.fields()
    accepted = fields | set(command.extra) | {"config"}
    if _takes_preset(command):
        accepted.add("preset")
    bools = {k for k in fields if field_type(k) is bool}
    values: dict[str, str] = {}
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            positional.extend(argv[i + 1 :])
            break
        if arg.startswith("--") and len(arg) > 2:
            key, eq, value = arg[2:].partition("=")
            key = _normalise(key, accepted | set(field_sections()))
            if key not in accepted:
                raise _unknown_flag(key, command, accepted)
            if not eq:
                nxt = argv[i + 1] if i + 1 < len(argv) else None
                # `--compile 0` must mean false, not a bare `--compile` and a stray "0"
                is_bool_value = nxt is not None and nxt.lower() in TRUE_WORDS + FALSE_WORDS
                if key in bools and not is_bool_value:
                    value = "true"
                elif nxt is None or (nxt.startswith("--") and len(nxt) > 2):
                    raise UsageError(f"flag '--{key}' needs a value.")
                else:
                    value = nxt
                    i += 1
            values[key] = value
        else:
            positional.append(arg)
        i += 1
    return values, positional


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML config file as flat key/value pairs ([section] tables flattened)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file '{p}' does not exist.")
    try:
        with open(p, "rb") as fh:
            return flatten(tomllib.load(fh))
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"config file '{p}' is not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise UsageError(f"config file '{p}' is not UTF-8 text.") from None


def _from_file(path: str, command: Command) -> dict[str, Any]:
    """The file's keys this command reads; others are skipped with a note, unknown ones refused."""
    values = read_toml(path)
    sections, fields = field_sections(), command.fields()
    taken, skipped = {}, []
    for key, value in values.items():
        if key == "preset" or key in fields:
            taken[key] = value
        elif key in sections:
            skipped.append(key)
        else:
            raise UsageError(
                f"{path}: unknown config key '{key}'.{closest(key, [*sections, 'preset'])}"
            )
    if skipped:
        print(
            f"note: {path}: mygpt2 {command.name} does not use {', '.join(skipped)}; skipped.",
            file=sys.stderr,
        )
    return taken


def parse(argv: list[str], command: Command) -> Args:
    """Defaults, then --preset, then --config FILE, then flags; validated."""
    values, positional = split_flags(argv, command)
    extras = {k: values.pop(k) for k in list(values) if k in command.extra}
    cfg = Config()
    try:
        if "preset" in values:
            apply_preset(cfg, values.pop("preset"), "flag")
        if "config" in values:
            path = values.pop("config")
            apply_values(cfg, _from_file(path, command), f"file {path}")
        apply_values(cfg, values, "flag")
        validate(cfg)
    except MyGPT2Error as e:
        raise UsageError(str(e)) from None
    return Args(cfg, extras, positional)


def no_positional(args: Args) -> None:
    """Refuse stray words on a command line that takes only flags."""
    if args.positional:
        raise UsageError(
            f"unexpected argument '{args.positional[0]}': flags look like --name value."
        )


def _shown_default(f: dataclasses.Field) -> str:
    value = f.default
    if isinstance(value, bool):
        return str(value).lower()
    if value == "":
        return '""'
    return str(value)


def help_text(command: Command) -> str:
    """`usage`, then this command's flags grouped by section: name, type, default, help."""
    lines = [command.usage.rstrip(), ""]
    if command.extra:
        lines.append("options:")
        lines += [f"  --{name:<22} {text}" for name, text in command.extra.items()]
        lines.append("")
    if not command.sections:  # a command of its own flags only (mygpt2 compare)
        return "\n".join(lines).rstrip()
    lines.append("config flags (also as TOML keys in --config FILE):")
    if _takes_preset(command):
        lines.append(f"  --preset NAME            {', '.join(PRESETS)}")
    for section in SECTIONS:
        if section not in command.sections:
            continue
        names = command.sections[section]
        lines.append(f"  [{section}]")
        for f in section_fields(section):
            if names is not None and f.name not in names:
                continue
            typ = field_type(f.name).__name__
            unit = f" ({f.metadata['unit']})" if f.metadata.get("unit") else ""
            flag = f"--{f.name} {typ.upper()}"
            default = command.defaults.get(f.name) or _shown_default(f)
            text = f"{f.metadata['help']}{unit} [default: {default}]"
            lines += textwrap.wrap(
                text, width=100, initial_indent=f"    {flag:<26} ", subsequent_indent=" " * 31
            )
    return "\n".join(lines)


def wants_help(argv: list[str]) -> bool:
    return "-h" in argv or "--help" in argv


EVERYTHING = Command("mygpt2", "", {section: ALL for section in SECTIONS})


def load_config(argv: list[str], command: Command = EVERYTHING) -> Config:
    """The validated config of a command line (by default every flag is accepted): for scripts,
    benchmarks and tests that build a config the way users write one."""
    args = parse(argv, command)
    no_positional(args)
    return args.config


def read_args(argv: list[str], command: Command, positional: bool = False) -> Args | None:
    """A command's parsed flags; None after printing its --help when that was asked for.
    Positional arguments are refused unless the command takes them."""
    if wants_help(argv):
        print(help_text(command))
        return None
    args = parse(argv, command)
    if not positional:
        no_positional(args)
    return args
