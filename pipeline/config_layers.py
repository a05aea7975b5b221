"""What would stop the config's layers from loading as meant: a -f site file whose sections do
not have invoke.yaml's shape, and INVOKE_* variables Invoke would cast wrongly or ignore.

Data in (the project file's and the site file's contents, as plain dicts, and the environment),
problems out; Invoke's own loading stays in tasks.py, the only module that knows Invoke.
"""

from typing import Any, List, Mapping

from pipeline.config import SECTIONS  # xenlab's: a variable under them naming no setting is a typo
from pipeline.errors import Problem


def site_file_problems(where: str, site: Any, project: Mapping[str, Any]) -> List[Problem]:
    """A -f file's contents against invoke.yaml's shape: sections and values where it has them."""
    if site is None:
        return []
    if not isinstance(site, dict):
        kind = type(site).__name__
        return [Problem("-f", where, f"holds a {kind}, not a mapping of sections (host:...)")]
    problems: List[Problem] = []

    def compare(mine: Mapping[str, Any], theirs: Mapping[str, Any], path: List[str]) -> None:
        for key, value in mine.items():
            dotted = ".".join(path + [str(key)])
            field = f"-f {where}: {dotted}"
            if isinstance(theirs.get(key), dict) and not isinstance(value, dict):
                problems.append(Problem(field, value, "must be a mapping, as in invoke.yaml"))
            elif isinstance(value, dict) and isinstance(theirs.get(key), dict):
                compare(value, theirs[key], path + [str(key)])
            elif isinstance(value, dict) and key in theirs and theirs[key] is not None:
                problems.append(Problem(field, value, "is a mapping; invoke.yaml's is a value"))

    compare(site, project, [])
    return problems


def environment_problems(merged: Mapping[str, Any], environ: Mapping[str, str]) -> List[Problem]:
    """INVOKE_* variables that Invoke cannot cast to the type of the value they override (it
    casts to that type, and a list it cannot set at all), and ones under xenlab's sections that
    name no setting: Invoke ignores those without a word, so a typo is silently not applied."""
    problems: List[Problem] = []
    known = set()

    def walk(node: Mapping[str, Any], path: List[str]) -> None:
        for key, value in node.items():
            name = "INVOKE_" + "_".join(path + [key]).upper()
            known.add(name)
            if isinstance(value, dict):
                walk(value, path + [key])
                continue
            if name not in environ or isinstance(value, (str, bool)) or value is None:
                continue
            raw, dotted = environ[name], ".".join(path + [key])
            if isinstance(value, (list, tuple)):
                problems.append(
                    Problem(name, raw, f"sets {dotted}, a list: set it in a -f site file")
                )
                continue
            try:
                type(value)(raw)
            except (TypeError, ValueError):
                kind = {int: "a whole number", float: "a number"}.get(
                    type(value), type(value).__name__
                )
                problems.append(
                    Problem(name, raw, f"sets {dotted}, which is {kind} (such as {value!r})")
                )

    walk(merged, [])
    prefixes = tuple(f"INVOKE_{s.upper()}_" for s in SECTIONS)
    for name in sorted(environ):
        if name.startswith(prefixes) and name not in known:
            problems.append(
                Problem(
                    name,
                    environ[name],
                    "names no setting (a typo? Invoke would ignore it); a setting missing from"
                    " every config file is set with -f, not the environment",
                )
            )
    return problems


def plain(node: Any) -> Any:
    """A config tree (Invoke's DataProxy or dicts) as plain dicts."""
    return {k: plain(node[k]) for k in node} if hasattr(node, "keys") else node


def missing_file_problem(path: str, exists: bool) -> Problem:
    why = "is not a file" if exists else "does not exist"
    return Problem("-f", path, f"{why}: no site file was read, so nothing is done")
