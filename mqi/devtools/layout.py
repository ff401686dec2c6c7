"""Checks that the code keeps the rooms of DESIGN.md: ``python -m mqi.devtools.layout``.

- arrows point down the layers below, never up;
- orchestration modules never import each other (they share ``mqi.chain``);
- the store knows no scheduler; nothing imports the CLI or the web app;
- SQL appears only in ``mqi/store/``; Slurm command text and pyslurm only in ``mqi/slurm/``.

Exit 0 when the layout holds; else one line per breach and exit 1.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]

# Layer of each room, lowest first; a room may import rooms of its own layer or below,
# except where a rule below says otherwise.
LAYERS: dict[str, int] = {
    # foundations
    "mqi": 0,
    "mqi.errors": 0,
    "mqi.shell": 0,
    "mqi.clock": 0,
    "mqi.textsafe": 0,
    "mqi.locks": 0,
    "mqi.retrying": 0,
    "mqi.moqui_params": 0,
    "mqi.config": 1,
    "mqi.logs": 1,
    "mqi.bundle": 1,
    # rooms with one job each
    "mqi.intake": 2,
    "mqi.transport": 2,
    "mqi.store": 2,
    "mqi.qa": 2,
    "mqi.render": 3,
    "mqi.slurm": 3,
    "mqi.post": 3,
    "mqi.testing": 3,
    "mqi.dicomnet": 3,
    "mqi.cron": 3,
    # shared by orchestration
    "mqi.chain": 4,
    "mqi.results": 4,
    # orchestration
    "mqi.submit": 5,
    "mqi.poll": 5,
    "mqi.actions": 5,
    "mqi.scan": 5,
    "mqi.doctor": 5,
    "mqi.sends": 5,
    "mqi.retention": 5,
    # the public API and its shells
    "mqi.api": 6,
    "mqi.cli": 7,
    "mqi.web": 7,
    "mqi.configdoc": 7,
    "mqi.devtools": 8,
}
ORCHESTRATION = {room for room, layer in LAYERS.items() if layer == 5}
FORBIDDEN = {
    "mqi.store": {"mqi.slurm"},  # the store knows no scheduler
    "mqi.intake": {"mqi.transport", "mqi.store", "mqi.slurm"},  # intake reads local files only
    "mqi.qa": {"mqi.transport", "mqi.store", "mqi.slurm"},  # a pure library of dose comparison
}
NOBODY_IMPORTS = {"mqi.cli", "mqi.web"}

_SQL = re.compile(
    r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX))\b", re.S
)
_SLURM = re.compile(r"(^|[;&|({]\s*|TZ=UTC\s+)(sbatch|squeue|sacct|scancel|scontrol|sinfo|srun)\s+-", re.M)


@dataclass(frozen=True)
class Breach:
    path: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.text}"


def room_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def module_name(path: Path, package: Path = PACKAGE) -> str:
    relative = path.relative_to(package.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(tree: ast.AST, module: str) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: -node.level] if node.level else []
                target = ".".join([*base, node.module or ""]).rstrip(".")
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # "from mqi import slurm" imports the room mqi.slurm
                if target == "mqi":
                    yield node.lineno, f"mqi.{alias.name}"


def _strings(tree: ast.AST) -> Iterator[tuple[int, str]]:
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
        if isinstance(node, ast.keyword) and node.arg in ("description", "help"):
            docstrings.add(id(node.value))  # prose for people, not commands
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def check_file(path: Path, package: Path = PACKAGE) -> list[Breach]:
    module = module_name(path, package)
    room = room_of(module)
    shown = str(path.relative_to(package.parent))
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=shown)
    breaches = []
    layer = LAYERS.get(room)
    if module == "mqi.__main__":
        layer = LAYERS["mqi.cli"]
    elif room == "mqi":
        return []  # the package's front door names the API lazily
    if layer is None:
        return [Breach(shown, 1, f"{room} is in no layer of mqi.devtools.layout: add it where it belongs")]
    for line, target in _imports(tree, module):
        if target.split(".")[0] == "pyslurm" and room != "mqi.slurm":
            breaches.append(Breach(shown, line, "pyslurm imported outside mqi/slurm/"))
            continue
        if not target.startswith("mqi"):
            continue
        other = room_of(target)
        if other == room or other == "mqi":
            continue
        other_layer = LAYERS.get(other)
        if other_layer is None:
            continue
        if other in NOBODY_IMPORTS and module != "mqi.__main__":
            breaches.append(Breach(shown, line, f"{room} imports {other}: nothing imports a shell"))
        elif other_layer > layer:
            breaches.append(Breach(shown, line, f"{room} imports {other}, a higher layer"))
        elif room in ORCHESTRATION and other in ORCHESTRATION:
            breaches.append(
                Breach(shown, line, f"{room} imports {other}: orchestration modules share mqi.chain")
            )
        elif other in FORBIDDEN.get(room, set()):
            breaches.append(Breach(shown, line, f"{room} must not import {other}"))
    for line, text in _strings(tree):
        if room != "mqi.store" and _SQL.search(text):
            breaches.append(Breach(shown, line, "SQL outside mqi/store/"))
        if room != "mqi.slurm" and _SLURM.search(text):
            breaches.append(Breach(shown, line, "Slurm command text outside mqi/slurm/"))
    return breaches


def check(package: Path = PACKAGE) -> list[Breach]:
    breaches: list[Breach] = []
    for path in sorted(package.rglob("*.py")):
        breaches += check_file(path, package)
    return breaches


def main() -> int:
    breaches = check()
    for breach in breaches:
        print(breach)
    if breaches:
        print(f"{len(breaches)} breach(es) of the layout of DESIGN.md", file=sys.stderr)
        return 1
    print(f"layout holds: {sum(1 for _ in PACKAGE.rglob('*.py'))} modules in {len(LAYERS)} rooms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
