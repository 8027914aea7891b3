"""The package's error base (:class:`UserError`) and how every command presents an error: one paragraph, exit 2.

A bad input is the user's to fix, so the answer is the message, not a traceback: what is
wrong, where (file, line, field or flag), what was expected and how to fix it. Every error class
of the package that describes such an input derives from :class:`UserError` (keeping its builtin
base too: ``ManifestError`` is still a ``ValueError``), and :func:`command` turns one raised
anywhere below a command -- also wrapped or chained by jsonargparse or Lightning's Trainer -- into::

    lightning-emo extract: error: data/manifest.csv, line 7, field 'end': 9.5 s is beyond the clip's
    duration (4.2 s) ...

on stderr and exit status :data:`EXIT_BAD_INPUT` (2, like a command-line usage error). Any other
exception is a bug and keeps its traceback (exit status 1). ``LIGHTNING_EMO_DEBUG=1`` or
``--traceback`` on any command shows the full traceback of a bad input too.

This module is the bottom layer: it imports nothing from the package (nor torch, nor Lightning).
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from typing import Callable, Iterator, NoReturn, Sequence

__all__ = ["DEBUG_ENV", "EXIT_BAD_INPUT", "TRACEBACK_FLAG", "ArgumentParser", "ConfigError", "DataError", "UsageError", "UserError",
           "command",
           "debug_enabled", "describe_parse_error", "find_user_error", "format_error", "present"]

EXIT_BAD_INPUT = 2
DEBUG_ENV = "LIGHTNING_EMO_DEBUG"
TRACEBACK_FLAG = "--traceback"


class UserError(Exception):
    """A bad input the user can fix; the message is the whole answer (what, where, what was expected, how to fix).

    Subclass it together with the builtin the error is (``class MediaError(UserError, ValueError)``)
    so callers catching the builtin keep working.
    """


class UsageError(UserError, ValueError):
    """A command-line value that cannot work; the message names the flag and the value."""


class DataError(UserError, ValueError):
    """Input data that cannot be used as asked (too few classes to fit on, no clips seen); the message says what
    to do."""


class ConfigError(UserError, ValueError):
    """A configuration value (a YAML key, a ``--a.b.c`` option) that cannot work; the message names the key."""


def debug_enabled() -> bool:
    """True when ``LIGHTNING_EMO_DEBUG`` is set to something other than ``0``/``false``/empty."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it wraps, outermost first (each once).

    A wrapper is followed to its ``__cause__`` (``raise X from e``), to the members of an
    ``ExceptionGroup``, and to its ``__context__`` only when it repeats that exception's message
    (a wrapper that forgot ``from``): an unrelated error raised while handling a bad input is a
    bug and must keep its own traceback.
    """
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        if e.__cause__ is not None:
            todo.append(e.__cause__)
        context = e.__context__
        if context is not None and not e.__suppress_context__ and str(context) and str(context) in str(e):
            todo.append(context)
        todo += list(getattr(e, "exceptions", ()) or ())  # ExceptionGroup


_WORKER = re.compile(r"^Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback", re.S)


def _user_error_classes() -> dict[str, type]:
    out, todo = {}, [UserError]
    while todo:
        cls = todo.pop()
        out[cls.__name__] = cls
        todo += cls.__subclasses__()
    return out


def _from_worker(exc: BaseException) -> UserError | None:
    """A UserError raised in a DataLoader worker: torch re-raises it as text (``Caught X in DataLoader worker...``)."""
    m = _WORKER.match(str(exc))
    if not m or m.group(1) not in _user_error_classes():
        return None
    last = next((line for line in reversed(str(exc).splitlines())
                 if re.match(rf"^[\w.]*\b{m.group(1)}: ", line)), None)
    return UserError(last.split(": ", 1)[1]) if last else None


def find_user_error(exc: BaseException) -> UserError | None:
    """The outermost :class:`UserError` in ``exc``'s chain (jsonargparse and Lightning wrap them), or None.

    One raised in a DataLoader worker process reaches the main process as text only; its message
    is recovered from that text.
    """
    chain = list(_chain(exc))
    found = next((e for e in chain if isinstance(e, UserError)), None)
    return found if found is not None else next((w for w in map(_from_worker, chain) if w is not None), None)


def format_error(command: str, error: BaseException) -> str:
    """``lightning-emo COMMAND: error: MESSAGE`` (the message's own line breaks kept)."""
    message = str(error).strip() or type(error).__name__
    prefix = f"lightning-emo {command}: " if command else "lightning-emo: "
    return f"{prefix}error: {message}"


def present(command: str, error: BaseException) -> int:
    """Print ``error`` as one paragraph on stderr; -> :data:`EXIT_BAD_INPUT`. With debugging on, raise it instead."""
    if debug_enabled():
        raise error
    print(format_error(command, error), file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT


_PARSER_KEY = re.compile(r'^Parser key "([^"]+)":?\s*(.*)$')
_CLASS_PATH = re.compile(r"^Problem with given class_path '([^']+)':")
_TYPE = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>")
_YAML_PLACE = re.compile(r'in "<unicode string>", ')
_UNKNOWN_OPTION = re.compile(r"^Option '([^']+)' is not accepted")


def _parses(path: str) -> bool:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            yaml.safe_load(f)
        return True
    except Exception:  # noqa: BLE001 -- unreadable counts as the culprit
        return False


def _suggest(name: str, class_path: str) -> str:
    """``; did you mean 'hidden_dim'?`` from the class's constructor arguments (best effort)."""
    import difflib
    import importlib
    import inspect

    try:
        module, _, cls = class_path.rpartition(".")
        params = [p for p in inspect.signature(getattr(importlib.import_module(module), cls)).parameters
                  if p not in ("self", "args", "kwargs")]
    except Exception:  # noqa: BLE001 -- a suggestion only: never fail the message over it
        return ""
    close = difflib.get_close_matches(name, params, n=1)
    return f"; did you mean '{close[0]}'?" if close else f" (accepted: {', '.join(params)})"


def describe_parse_error(error: BaseException, command: str, arguments: Sequence[str] = (),
                         print_config: bool = True) -> str:
    """One paragraph from a jsonargparse parse error: the full key (``data.init_args.batch_size``) and why.

    jsonargparse nests one error per level (``Parser key "data"`` -> ``Problem with given
    class_path ...`` -> ``Parser key "batch_size"`` -> ``Expected a <class 'int'>. Got value: abc``),
    each raised from the next; the chain gives the key path and its innermost message the reason.
    The ``--config`` files in ``arguments`` are named unless the key was given on the command line.
    """
    arguments = [str(a) for a in arguments]
    config_files = [b for a, b in zip(arguments, arguments[1:]) if a in ("--config", "-c")]
    config_files += [a.split("=", 1)[1] for a in arguments if a.startswith("--config=")]
    keys: list[str] = []
    class_path = None
    last_first = None
    chain = [error]
    while chain[-1].__cause__ is not None and len(chain) < 100:
        chain.append(chain[-1].__cause__)
    reason = ""
    for e in chain:
        text = str(e.args[0] if isinstance(e, KeyError) and e.args else e).strip()
        first = text.split("\n", 1)[0].strip()
        if first != last_first:
            last_first = first
            m = _PARSER_KEY.match(first)
            if m:
                keys.append(m.group(1))
            elif _CLASS_PATH.match(first):
                keys.append("init_args")
                class_path = _CLASS_PATH.match(first).group(1)
        reason = text
    m = _PARSER_KEY.match(reason.split("\n", 1)[0])
    if m:  # the innermost level still names its key on its first line: keep only what follows
        reason = (m.group(2) + "\n" + reason.split("\n", 1)[1] if "\n" in reason else m.group(2)).strip()
    reason = " ".join(line.strip() for line in reason.splitlines() if line.strip())
    reason = _TYPE.sub(r"\1", reason).replace("Expected a ", "expected ").replace(". Got value: ", ", got ")
    if _YAML_PLACE.search(reason) or reason.startswith("Problems parsing config"):
        reason = _YAML_PLACE.sub("in the YAML, ", reason)
    if keys and keys[-1] == "init_args" and isinstance(chain[-1], (ImportError, AttributeError)):
        keys[-1] = "class_path"  # the class itself could not be imported
    unknown = _UNKNOWN_OPTION.match(reason)
    if unknown and class_path:
        reason += _suggest(unknown.group(1), class_path)
    key = ".".join(k for k in keys if k)
    if any(str(a).split("=", 1)[0] == f"--{key.replace('_', '-')}" for a in arguments):
        key = key.replace("_", "-")  # the flag as typed: --batch-size, not its dest batch_size
    where = f"--{key}: " if key else ""
    on_command_line = (key and any(str(a).startswith(f"--{key}") for a in arguments)) or \
        reason.startswith("unrecognized arguments")
    if "in the YAML" in reason:  # name the file that does not parse
        config_files = [f for f in config_files if not _parses(f)] or config_files
    configs = f" (config: {', '.join(config_files)})" if config_files and not on_command_line else ""
    prog = f"lightning-emo {command}" if command else "lightning-emo"
    fix = f"`{prog} --help` lists every option and its type"
    if print_config:
        fix += f"; `{prog} ... --print_config` shows the resolved configuration"
    return f"{where}{reason.rstrip('.')}{configs}. {fix}."


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one paragraph too (exit status 2, as argparse's).

    argparse prints the whole usage block before the error; here the error names the option and
    points at ``--help`` instead.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


def _take_traceback_flag(argv: Sequence[str] | None) -> list[str] | None:
    """Drop ``--traceback`` (from ``argv``, or from ``sys.argv`` when ``argv`` is None) and turn debugging on.

    The switch travels as the environment variable, so processes a command starts (DDP ranks,
    decoding workers) show tracebacks too.
    """
    source = sys.argv[1:] if argv is None else list(argv)
    if TRACEBACK_FLAG not in source:
        return None if argv is None else source
    os.environ[DEBUG_ENV] = "1"
    kept = [a for a in source if a != TRACEBACK_FLAG]
    if argv is None:
        sys.argv[1:] = kept
        return None
    return kept


def command(name: str | None = None) -> Callable[[Callable[..., int | None]], Callable[..., int]]:
    """Decorate a command's ``main(argv) -> int``: a :class:`UserError` anywhere in what it raises is presented.

    ``name`` is the command's name in messages; None takes it from ``argv[0]`` (LightningCLI's
    subcommand). ``SystemExit`` (argparse usage errors, ``--help``) and ``KeyboardInterrupt`` pass
    through; unexpected exceptions keep their traceback.
    """

    def decorate(fn: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(fn)
        def main(argv: Sequence[str] | None = None) -> int:
            argv = _take_traceback_flag(argv)
            try:
                return int(fn(argv) or 0)
            except Exception as e:
                error = find_user_error(e)
                if error is None or debug_enabled():
                    raise
                args = sys.argv[1:] if argv is None else argv
                return present(name or (args[0] if args else ""), error)

        main.__wrapped_command__ = True  # type: ignore[attr-defined]
        return main

    return decorate
