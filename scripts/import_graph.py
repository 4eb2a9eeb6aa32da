"""Print the imports between the top-level packages, counted, and flag any pair that imports
both ways: the picture `lint-imports` keeps true (docs/architecture.md, "Layout").

    .venv/bin/python scripts/import_graph.py
"""

from __future__ import annotations

import importlib.util

import grimp

PACKAGES = ("console", "simulator", "worker", "producers")


def main() -> None:
    present = [name for name in PACKAGES if importlib.util.find_spec(name) is not None]
    graph = grimp.build_graph(*present)
    edges: dict[tuple[str, str], set[str]] = {}
    for module in graph.modules:
        top = module.split(".")[0]
        for imported in graph.find_modules_directly_imported_by(module):
            other = imported.split(".")[0]
            if other != top:
                edges.setdefault((top, other), set()).add(f"{module} -> {imported}")
    for (source, target), imports in sorted(edges.items()):
        cycle = " (imports back: a cycle)" if (target, source) in edges else ""
        print(f"{source} -> {target}: {len(imports)} imports{cycle}")


if __name__ == "__main__":
    main()
