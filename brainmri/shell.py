"""The shell every entry script shares: its flags, the machine-dependent defaults, one-line errors.

A script declares its flags (``--dry-run``, ``--out DIR``...); every other argument is a
``key=value`` setting or, where the script takes them, a positional one (images, a
folder). A toolkit error (:class:`~brainmri.errors.BrainMRIError`: a wrong key, a missing
folder, a bad image) becomes one line on stderr and exit code 2; anything else is a bug
and keeps its traceback. The scripts in ``launch/`` hand this module their ``argv`` and
environment; nothing here reads ``sys.argv`` or ``os.environ`` itself.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from brainmri import config as config_lib
from brainmri.config import Config
from brainmri.errors import BrainMRIError


def recipes_beside(script: str) -> Path:
    """The ``recipes/`` folder of the checkout that holds an entry script (``launch/x.py``)."""
    return Path(script).resolve().parents[1] / "recipes"


@dataclass(frozen=True)
class Flag:
    """An option of one script: ``--name`` alone, or ``--name VALUE`` / ``--name=VALUE``."""

    name: str
    value: Optional[str] = None  # what the value is called in the usage line; None: a switch
    check: Optional[Callable[[str], object]] = None  # converts the value; raises BrainMRIError if wrong
    default: object = None

    @property
    def usage(self) -> str:
        return f"{self.name}={self.value}" if self.value else self.name


@dataclass
class Args:
    """A parsed command line: settings (``key=value``), flag values and positional arguments."""

    settings: list[str] = field(default_factory=list)
    flags: dict[str, object] = field(default_factory=dict)
    positional: list[str] = field(default_factory=list)

    def __getitem__(self, flag: str) -> object:
        return self.flags[flag]


def whole_number(minimum: int) -> Callable[[str], int]:
    """A flag value check: an integer >= ``minimum``."""

    def check(value: str) -> int:
        if not value.isdigit() or int(value) < minimum:
            raise BrainMRIError(f"wants a whole number{f' >= {minimum}' if minimum else ''}, got {value!r}")
        return int(value)

    return check


def _is_setting(arg: str, positional: bool) -> bool:
    key, eq, _ = arg.partition("=")
    if not eq:
        return False
    # With positional arguments, a path that holds "=" (and exists) is a path, not a setting.
    return not (positional and ("/" in key or Path(arg).exists()))


def parse(argv: Sequence[str], flags: Sequence[Flag] = (), positional: bool = False) -> Args:
    """Split ``argv`` into settings, declared flags and (where allowed) positional arguments."""
    by_name = {f.name: f for f in flags}
    options = ", ".join(f.usage for f in flags)
    out = Args(flags={f.name: (f.default if f.value else False) for f in flags})
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg.startswith("-"):
            name, eq, value = arg.partition("=")
            flag = by_name.get(name)
            if flag is None:
                listed = f"options: {options}; " if options else ""
                raise BrainMRIError(f"unknown option {name} ({listed}everything else is key=value)")
            if not flag.value:
                out.flags[name] = True
                continue
            if not eq:
                if not args:
                    raise BrainMRIError(f"{name} needs a value ({flag.usage})")
                value = args.pop(0)
            try:
                out.flags[name] = flag.check(value) if flag.check else value
            except BrainMRIError as e:
                raise BrainMRIError(f"{name} {e}") from None
        elif _is_setting(arg, positional):
            out.settings.append(arg)
        elif positional:
            out.positional.append(arg)
        else:
            raise BrainMRIError(f"expected key=value, got '{arg}'")
    return out


def default_cache_dir(environ: Mapping[str, str]) -> Path:
    """Node-local scratch for the image cache: the job's tmp dir, TMPDIR, else ~/.cache."""
    for var in ("SLURM_TMPDIR", "TMPDIR"):
        if environ.get(var):
            return Path(environ[var]) / "brainmri-cache"
    return Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "brainmri"


def load_run_config(settings: Sequence[str], recipes: Path, environ: Mapping[str, str]) -> Config:
    """The training config of ``settings``, with this machine's defaults under the recipe's."""
    return config_lib.load_config(settings, recipes, defaults={"data.cache_dir": str(default_cache_dir(environ))})


def run(
    command: Callable[[Args], int],
    argv: Sequence[str],
    flags: Sequence[Flag] = (),
    positional: bool = False,
    quiet: bool = False,
) -> int:
    """Parse ``argv`` and run ``command``; a toolkit error is one line on stderr and exit 2.

    ``quiet``: say nothing (the other ranks of a multi-process run, which fail alike).
    """
    try:
        return command(parse(argv, flags, positional))
    except BrainMRIError as e:
        if not quiet:
            print(f"error: {e}", file=sys.stderr)
        return 2
