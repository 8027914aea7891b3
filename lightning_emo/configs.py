"""The shipped configs: where they live, how a config name becomes a file, and ``lightning-emo configs``.

The source is the repository's top-level ``configs/``; wheels carry the same tree as
``lightning_emo/_configs`` (``pyproject.toml`` maps it, as it maps ``zoo/``). Every command that
takes a config (``fit``/``validate``/``test``/``predict``, ``reproduce``, ``demo``, and the
``train_config`` entries of a protocol YAML) resolves it with :func:`resolve_config`: a file
that exists at the given path is used as it is; otherwise the name is looked up among the
shipped configs, with or without the ``configs/`` prefix and the ``.yaml`` suffix, so that
``--config experiment/hubert.yaml`` and ``--config configs/experiment/hubert.yaml`` work from
any folder of an installed package. A local file always wins over a shipped one of the same name.
"""

from __future__ import annotations

import argparse
import difflib
import shutil
import sys
from pathlib import Path

from lightning_emo import errors
from lightning_emo.errors import UserError

__all__ = ["ConfigNotFoundError", "config_dir", "list_configs", "main", "resolve_config", "resolve_config_args",
           "shipped_config"]

SUFFIXES = (".yaml", ".yml", ".json")
PREFIX = "configs/"


class ConfigNotFoundError(UserError, FileNotFoundError):
    """A config that is neither a file at the given path nor a shipped config; the message lists near names."""


def config_dir() -> Path:
    """The shipped configs: the checkout's ``configs/`` (source tree, editable install), else the wheel's copy."""
    package = Path(__file__).resolve().parent
    checkout = package.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "configs").is_dir():
        return checkout / "configs"
    return package / "_configs"


def list_configs(group: str | None = None) -> list[str]:
    """Names of the shipped configs (``experiment/hubert.yaml``...), sorted; ``group`` keeps one folder."""
    root = config_dir()
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix in SUFFIXES and p.is_file())
    if group:
        group = _strip(group).strip("/") + "/"
        names = [n for n in names if n.startswith(group)]
    return names


def _strip(name: str) -> str:
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name[len(PREFIX):] if name.startswith(PREFIX) else name


def shipped_config(name: str | Path) -> Path | None:
    """The shipped config called ``name`` (``experiment/x.yaml``, ``configs/experiment/x``...), or ``None``."""
    rel = _strip(str(name))
    if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        return None
    root = config_dir()
    for candidate in (rel, *(rel + s for s in SUFFIXES if not rel.endswith(SUFFIXES))):
        path = root / candidate
        if path.is_file():
            return path
    return None


def resolve_config(path: str | Path) -> Path:
    """``path`` if that file exists, else the shipped config of that name; :class:`ConfigNotFoundError` otherwise."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    found = shipped_config(path)
    if found is not None:
        return found
    raise ConfigNotFoundError(_not_found(str(path)))


def _not_found(name: str) -> str:
    names = list_configs()
    near = difflib.get_close_matches(_strip(name), names, n=3, cutoff=0.5)
    if not near:  # a known file name in another group, e.g. "hubert.yaml" for "experiment/hubert.yaml"
        base = Path(name).name
        near = [n for n in names if Path(n).name in (base, base + ".yaml")][:3]
    hint = f" Did you mean {' or '.join(near)}?" if near else ""
    return (f"config {name!r} not found: no such file in {Path.cwd()}, and no shipped config of that name.{hint} "
            f"`lightning-emo configs list` shows the shipped configs; `lightning-emo configs copy NAME DEST` "
            f"copies one to edit.")


def _looks_like_path(value: str) -> bool:
    # ActionConfigFile also takes inline YAML/JSON ("{trainer: {max_epochs: 3}}"): leave that to jsonargparse
    return "\n" not in value and not value.lstrip().startswith(("{", "[")) and value.endswith(SUFFIXES)


def resolve_config_args(argv: list[str], flags: tuple[str, ...] = ("--config", "-c")) -> list[str]:
    """``argv`` with every config-file argument (``--config X``, ``--config=X``, ``-c X``) resolved.

    Values that exist as files stay as given; shipped names become their packaged file; a name
    that is neither (ending in ``.yaml``/``.yml``/``.json``) raises :class:`ConfigNotFoundError`.
    Inline YAML values and anything else are passed on untouched.
    """
    out: list[str] = []
    expect = False
    for arg in argv:
        if expect:
            out.append(_resolve_value(arg))
            expect = False
            continue
        flag, eq, value = arg.partition("=")
        if flag in flags and eq:
            out.append(f"{flag}={_resolve_value(value)}")
            continue
        expect = arg in flags
        out.append(arg)
    return out


def _resolve_value(value: str) -> str:
    if Path(value).expanduser().is_file():
        return value
    found = shipped_config(value)
    if found is not None:
        return str(found)
    if _looks_like_path(value):
        raise ConfigNotFoundError(_not_found(value))
    return value


# ------------------------------------------------------------------------------------ command


def _summary(path: Path) -> str:
    """The first comment line of a config (what it is), without the ``#``."""
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line:
            break
    return ""


def _list(args: argparse.Namespace) -> int:
    names = list_configs(args.group)
    if not names:
        raise ConfigNotFoundError(f"no shipped configs in group {args.group!r}; groups: "
                                  f"{', '.join(sorted({n.split('/')[0] for n in list_configs()}))}")
    width = max(map(len, names))
    print(f"shipped configs ({config_dir()}):")
    for name in names:
        summary = _summary(config_dir() / name)
        if len(summary) > 100 - width:
            summary = summary[:97 - width] + "..."
        print(f"  {name.ljust(width)}  {summary}".rstrip())
    return 0


def _show(args: argparse.Namespace) -> int:
    sys.stdout.write(resolve_shipped(args.name).read_text(encoding="utf-8"))
    return 0


def resolve_shipped(name: str) -> Path:
    """The shipped config ``name`` (never a local file): what ``configs show|copy`` read."""
    found = shipped_config(name)
    if found is None:
        raise ConfigNotFoundError(_not_found(name).replace(f"no such file in {Path.cwd()}, and ", ""))
    return found


def _copy(args: argparse.Namespace) -> int:
    root = config_dir()
    group = root / _strip(args.name).strip("/")
    if _strip(args.name).strip("/") in ("", "all", "."):
        sources = [(root / n, Path(n)) for n in list_configs()]
        sources += [(root / "README.md", Path("README.md"))] if (root / "README.md").is_file() else []
        dest_dir = Path(args.dest)
    elif group.is_dir() and list_configs(group.name):
        sources = [(root / n, Path(n).relative_to(group.name)) for n in list_configs(group.name)]
        dest_dir = Path(args.dest)
    else:
        source = resolve_shipped(args.name)
        dest = Path(args.dest)
        if dest.is_dir() or args.dest.endswith(("/", "\\")):
            dest = dest / source.name
        sources, dest_dir = [(source, Path(dest.name))], dest.parent
    targets = [(src, dest_dir / rel) for src, rel in sources]
    existing = [str(t) for _, t in targets if t.exists()]
    if existing and not args.overwrite:
        raise FileExistsError(f"not overwriting {', '.join(existing[:5])}{' ...' if len(existing) > 5 else ''} "
                              f"(pass --overwrite to replace, or choose another DEST)")
    for src, target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        print(target)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = errors.ArgumentParser(
        prog="lightning-emo configs",
        description="The configs shipped with the package. Any command that takes a config "
                    "(fit/validate/test/predict --config, reproduce --config) accepts a shipped name such as "
                    "experiment/hubert.yaml (or configs/experiment/hubert.yaml) from any folder; a local file "
                    "of that path wins.",
        epilog="examples:\n  lightning-emo configs list experiment\n  lightning-emo configs show experiment/hubert.yaml"
               "\n  lightning-emo configs copy experiment/hubert.yaml my_hubert.yaml\n"
               "  lightning-emo configs copy all configs/      # the whole tree, to edit",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", metavar="{list,show,copy}")
    p = sub.add_parser("list", help="the shipped configs and what each is (default)")
    p.add_argument("group", nargs="?", help="one folder only: experiment, model, trainer, logger, pretrain, reproduce")
    p.set_defaults(func=_list)
    p = sub.add_parser("show", help="print a shipped config")
    p.add_argument("name", help="e.g. experiment/hubert.yaml")
    p.set_defaults(func=_show)
    p = sub.add_parser("copy", help="copy a shipped config (or a group, or 'all') to edit")
    p.add_argument("name", help="a config (experiment/hubert.yaml), a group (experiment) or 'all'")
    p.add_argument("dest", help="a file, or a folder (kept layout for groups and 'all')")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.set_defaults(func=_copy)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``lightning-emo configs [list [GROUP] | show NAME | copy NAME DEST [--overwrite]]``."""
    args = _parser().parse_args(argv)
    if args.action is None:
        args = _parser().parse_args(["list"])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
