"""The package reads as floors: no module imports one that imports it back (counting every import statement,
also inside functions and under TYPE_CHECKING; a package's ``__init__`` is a module), and no function is
longer than 100 lines. Both are computed from the source with ``ast``, so they run in milliseconds."""
import ast
import runpy
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 100


def module_files(package: Path) -> Dict[str, Path]:
    """Dotted module name -> file, for every module of ``package`` (``pkg.sub`` for ``pkg/sub/__init__.py``)."""
    mods = {}
    for f in package.rglob('*.py'):
        parts = f.relative_to(package.parent).with_suffix('').parts
        mods['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = f
    return mods


def imported_names(module: str, is_package: bool, node: ast.AST) -> List[str]:
    """What one import statement names, as dotted names: ``from .a import b`` gives ``pkg.a`` and ``pkg.a.b``."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = module if is_package else module.rpartition('.')[0]
    if node.level:
        base = '.'.join(base.split('.')[:len(base.split('.')) - node.level + 1])
        full = base + ('.' + node.module if node.module else '')
    else:
        full = node.module
    return [full] + [f'{full}.{a.name}' for a in node.names]


def import_graph(package: Path) -> Dict[str, Set[str]]:
    """Module -> the package's modules it imports (a name that is not a module counts as its module)."""
    mods = module_files(package)
    graph = {}
    for name, f in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in imported_names(name, f.name == '__init__.py', node):
                    while target not in mods and '.' in target:
                        target = target.rpartition('.')[0]
                    if target in mods and target != name:
                        deps.add(target)
        graph[name] = deps
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def long_functions(paths: List[Path], limit: int = MAX_LINES) -> List[str]:
    """Every function (or method) longer than ``limit`` lines, from ``def`` to its end, docstring included."""
    out = []
    for f in paths:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    out.append(f'{f}:{node.lineno} {node.name} ({lines} lines)')
    return out


def test_the_cycle_finder_sees_a_cycle_and_its_import_kinds(tmp_path):
    pkg = tmp_path / 'pkg'
    (pkg / 'sub').mkdir(parents=True)
    (pkg / '__init__.py').write_text('from .a import f\n')
    (pkg / 'a.py').write_text('def f():\n    from .sub import g\n')  # inside a function
    (pkg / 'sub' / '__init__.py').write_text('from ..b import h\n')
    (pkg / 'b.py').write_text('from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n')
    (pkg / 'leaf.py').write_text('import os\n')
    assert cycles(import_graph(pkg)) == [['pkg.a', 'pkg.b', 'pkg.sub']]
    (pkg / 'b.py').write_text('')
    assert cycles(import_graph(pkg)) == []


def test_no_import_cycle_in_timm_wae():
    found = cycles(import_graph(ROOT / 'timm_wae'))
    assert not found, f'import cycles in timm_wae: {found}'


def test_the_length_check_sees_a_long_function(tmp_path):
    f = tmp_path / 'long.py'
    f.write_text('@decorated\ndef long():\n' + '    x = 1\n' * 99 + '\n\ndef short():\n    pass\n')
    assert long_functions([f], limit=100) == []
    f.write_text('class A:\n    def long(self):\n' + '        x = 1\n' * 100)
    assert [line.split(' ')[1] for line in long_functions([f], limit=100)] == ['long']


@pytest.mark.parametrize('folder', ['timm_wae', 'timm_wae_cli', 'recipes'])
def test_no_function_longer_than_100_lines(folder):
    found = long_functions(sorted((ROOT / folder).rglob('*.py')))
    assert not found, f'functions over {MAX_LINES} lines: {found}'


def registry_rows(source: str) -> Tuple[Dict[str, Tuple[str, ...]], Dict[str, Tuple[str, ...]]]:
    """From registry.py's source: name -> (backbone, front_end, ih_fusion) of each ``_cfgs`` row, and of each
    ``@register_model`` entry's ``model_args``."""
    cfgs, entries = {}, {}
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, 'id', None) == '_cfgs':
            name, *args = [ast.literal_eval(a) for a in node.args]
            cfgs[name] = tuple(args)
    for fn in tree.body:
        registered = any(getattr(d, 'id', None) == 'register_model' for d in getattr(fn, 'decorator_list', ()))
        if isinstance(fn, ast.FunctionDef) and registered:
            for stmt in fn.body:
                if isinstance(stmt, ast.Assign) and stmt.targets[0].id == 'model_args':
                    kw = {k.arg: ast.literal_eval(k.value) for k in stmt.value.keywords}
                    entries[fn.name] = (kw['backbone'], kw['front_end'], kw['ih_fusion'])
    return cfgs, entries


def test_every_registered_entry_states_the_model_args_its_cfgs_were_made_for():
    # the tag table imports nothing of the package (nor torch): read without importing timm_wae
    MODELS = runpy.run_path(str(ROOT / 'timm_wae' / 'pretrained.py'))['MODELS']
    cfgs, entries = registry_rows((ROOT / 'timm_wae' / 'models' / 'registry.py').read_text())
    assert cfgs == entries
    assert sorted(entries) == sorted(MODELS) and all(entries[n][0] == MODELS[n] for n in MODELS)
    changed = (ROOT / 'timm_wae' / 'models' / 'registry.py').read_text().replace(
        "model_args = dict(backbone='resnet18', front_end='wae2', ih_fusion='stem')",
        "model_args = dict(backbone='resnet18', front_end='wae2', ih_fusion='branch')")
    cfgs, entries = registry_rows(changed)
    assert cfgs != entries  # the check sees an entry that disagrees with its cfgs
