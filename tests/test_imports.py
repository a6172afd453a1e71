"""The floors of DESIGN.md section 2: `import gradcam` imports no framework (checked in a fresh interpreter
through sys.modules), and no module imports upward, sideways or in a cycle (read from the source)."""
import ast
import subprocess
import sys
from pathlib import Path

FRAMEWORKS = ["torch", "tensorflow", "keras", "jax", "flax"]


def modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(out.split())


def test_import_gradcam_imports_no_framework():
    loaded = modules_after("import gradcam, gradcam.reference")
    assert not {m.split(".")[0] for m in loaded} & set(FRAMEWORKS)


def test_reference_imports_no_framework_and_no_backend():
    loaded = modules_after("import gradcam.reference")
    assert not {m.split(".")[0] for m in loaded} & set(FRAMEWORKS)
    assert not {"gradcam.backends.torch", "gradcam.backends.tensorflow", "gradcam.backends.jax"} & loaded


# --- the floors of DESIGN.md section 2, read from the source (docs/architecture.md draws them) ---------------

PACKAGE = Path(__file__).resolve().parents[1] / "gradcam"

# Each room of gradcam/ and its floor: a module may import rooms on lower floors and its own room, nothing on
# its own floor or above. reference and backends are the bottom (a backend reads only the ReLU rule names).
FLOORS = {
    "reference": 0,
    "backends": 1,
    "copies": 1,
    "explanation": 1,
    "images": 1,
    "targets": 1.5,  # the target vocabulary: reads backends.common and explanation, serves methods and metrics
    "datasets": 2,
    "models": 3,
    "methods": 2,
    "metrics": 2,
    "attacks": 2,
    "volumes": 2,  # clips from files and their slice overlays: reads images and reference, serves the command
    "api": 3,
    "compare": 4,
    "evaluation": 4,
    "batch": 5,
    "engines": 6,
    "cli": 7,
}
# rooms that may name no framework anywhere, not even inside a function
FRAMEWORK_FREE = {"reference", "backends.common", "backends.contract", "backends.probe", "backends.layouts",
                  "backends.choice", "copies", "explanation", "images", "methods", "metrics", "api", "compare",
                  "targets", "volumes"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function, with relative imports made absolute."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parents + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def room(module: str) -> str:
    """``gradcam.backends.torch.capture`` -> ``backends``."""
    return module.split(".")[1] if module.count(".") else ""


def source_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_room_has_a_floor():
    rooms = {room(name) for name in source_modules()} - {"", "__main__"}
    assert rooms <= set(FLOORS), f"rooms without a floor in this test: {sorted(rooms - set(FLOORS))}"


def test_nothing_imports_upward_or_sideways():
    wrong = []
    for name, path in source_modules().items():
        own = room(name)
        if own not in FLOORS:
            continue
        for target in imported_modules(path):
            other = room(target) if target.startswith("gradcam.") else None
            if other and other != own and other in FLOORS and FLOORS[other] >= FLOORS[own]:
                wrong.append(f"{name} imports {target} ({other} is on floor {FLOORS[other]}, {own} on {FLOORS[own]})")
    assert not wrong, "\n".join(wrong)


def test_backends_import_no_other_backend():
    backends = ("torch", "tensorflow", "jax")
    wrong = []
    for name, path in source_modules().items():
        parts = name.split(".")
        if len(parts) < 3 or parts[1] != "backends" or parts[2] not in backends:
            continue
        for target in imported_modules(path):
            t = target.split(".")
            if len(t) >= 3 and t[:2] == ["gradcam", "backends"] and t[2] in backends and t[2] != parts[2]:
                wrong.append(f"{name} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_framework_free_rooms_name_no_framework():
    wrong = []
    for name, path in source_modules().items():
        inner = name.partition(".")[2]
        if not any(inner == free or inner.startswith(free + ".") for free in FRAMEWORK_FREE):
            continue
        named = {target.split(".")[0] for target in imported_modules(path)} & set(FRAMEWORKS)
        if named:
            wrong.append(f"{name} imports {sorted(named)}")
    assert not wrong, "\n".join(wrong)


def test_reference_imports_numpy_scipy_and_itself_only():
    allowed = {"numpy", "scipy", "gradcam", "__future__"} | set(sys.stdlib_module_names)
    wrong = []
    for name, path in source_modules().items():
        if room(name) != "reference":
            continue
        for target in imported_modules(path):
            top = target.split(".")[0]
            if top not in allowed or (top == "gradcam" and not target.startswith("gradcam.reference")):
                wrong.append(f"{name} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    modules = source_modules()
    graph = {}
    for name, path in modules.items():
        # a package re-exporting its own submodules is not a cycle between rooms
        graph[name] = {t for t in imported_modules(path) if t in modules and t != name
                       and not t.startswith(name + ".") and not name.startswith(t + ".")}
    cycles = [component for component in strongly_connected(graph) if len(component) > 1]
    assert not cycles, f"import cycles: {cycles}"


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            advanced = False
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def test_the_cycle_finder_finds_a_cycle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"], ["d"]]
