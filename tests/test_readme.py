"""README.md's "Use" code runs as written, in a fresh process, offline, minus only the lines that need weights
from the Hub (each named here, so that a changed README line fails this test instead of being skipped)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# the README's lines marked "weights" (they download from the Hub), each exactly as the README has it, and what
# runs instead: timm's resnet50 without its weights (the next line converts it), and nothing for the
# torchvision tag (no weights are published yet).
WEIGHTS_LINES = {
    "trained = timm.create_model('resnet50', pretrained=True)         # weights (timm's own)":
        "trained = timm.create_model('resnet50', pretrained=False)",
    "model = torchvision.models.get_model('wae_resnet18', weights='IMAGENETTE')           # weights": None,
}
# the README's placeholder for a clone of this repository
CLONE = ("torch.hub.load('path/to/timm_wae',", f'torch.hub.load({str(REPO_ROOT)!r},')


def use_section_code() -> str:
    """The ```python blocks of README.md's "## Use" section (up to the next "## " heading)."""
    readme = (REPO_ROOT / 'README.md').read_text(encoding='utf-8')
    section = re.search(r'^## Use\n(.*?)(?=^## )', readme, flags=re.M | re.S)
    assert section, 'README.md has no "## Use" section'
    blocks = re.findall(r'^```python\n(.*?)^```', section.group(1), flags=re.M | re.S)
    assert blocks, 'README.md\'s "Use" section has no python code block'
    return '\n'.join(blocks)


def runnable(code: str) -> str:
    """The code with the weights lines replaced or dropped and the clone's path filled in."""
    lines = code.splitlines()
    marked = [line for line in lines if re.search(r'#\s*weights\b', line)]
    assert sorted(marked) == sorted(WEIGHTS_LINES), f'the lines marked "weights" changed: {marked}'
    assert sum(CLONE[0] in line for line in lines) == 1, f'no single {CLONE[0]!r} line'
    out = [WEIGHTS_LINES[line] if line in WEIGHTS_LINES else line.replace(*CLONE) for line in lines]
    return '\n'.join(line for line in out if line is not None)


def test_the_use_section_is_found_and_only_the_weights_lines_change():
    code = use_section_code()
    ran = runnable(code)
    for route in ('import torch, timm, timm_wae', 'timm.create_model(', 'WAEWrapper(backbone', 'torchvision.models',
                  'torch.hub.load(', 'from_trained(', 'save_pretrained(', 'load_model('):
        assert route in code, f'the "Use" code lost its {route!r} route'
    dropped = set(code.splitlines()) - set(ran.splitlines())
    assert dropped == set(WEIGHTS_LINES) | {line for line in code.splitlines() if CLONE[0] in line}
    assert 'pretrained=True' not in ran and "weights='IMAGENETTE'" not in ran


@pytest.mark.slow
def test_the_readme_use_code_runs(tmp_path):
    """Offline, with an empty Hugging Face cache, from a folder outside the repository."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'TIMM_WAE_'))}
    env.update(HF_HUB_OFFLINE='1', HF_HOME=str(tmp_path / 'hf'), TORCH_HOME=str(tmp_path / 'torch'),
               OMP_NUM_THREADS='1')
    check = ("\nout = model(torch.randn(2, 3, 224, 224))\nassert out.shape == (2, 1000) and torch.isfinite(out).all()"
             "\nprint('README OK', type(model).__name__)\n")
    proc = subprocess.run([sys.executable, '-c', runnable(use_section_code()) + check], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f'stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}'
    assert 'README OK WAEWrapper' in proc.stdout, proc.stdout


DOCS = [REPO_ROOT / 'README.md', REPO_ROOT / 'MODEL_CARD.md', *sorted((REPO_ROOT / 'docs').glob('*.md'))]


def test_readme_and_model_card_are_short_and_the_card_has_the_hugging_face_sections():
    readme = (REPO_ROOT / 'README.md').read_text(encoding='utf-8')
    card = (REPO_ROOT / 'MODEL_CARD.md').read_text(encoding='utf-8')
    assert len(readme.splitlines()) <= 200, len(readme.splitlines())
    assert len(card.splitlines()) <= 250, len(card.splitlines())
    headings = [h.lower() for h in re.findall(r'^##\s+(.+)$', card, flags=re.M)]
    for section in (('model details',), ('use', 'usage'), ('evaluation', 'results'), ('limitations',), ('citation',)):
        assert any(any(word in h for word in section) for h in headings), f'MODEL_CARD.md lacks a {section} section'
    assert re.search(r'^@\w+\{', card, flags=re.M), "MODEL_CARD.md's citation has no BibTeX entry"
    assert card.startswith('---\n') and '\nlibrary_name: timm\n' in card.split('---')[1], 'no Hub metadata header'


@pytest.mark.parametrize('page', DOCS, ids=lambda p: p.name)
def test_the_documentation_speaks_to_users(page):
    """No issue numbers, no sessions, no paths into the developers' shared folder; links to pages that exist."""
    text = page.read_text(encoding='utf-8')
    for word in ('issue', 'session', '../shared'):
        assert word not in text.lower(), f'{page.name} mentions {word!r}'
    for target in re.findall(r'\]\(([^)#\s]+)\)', text):
        if '://' not in target:
            assert (page.parent / target).exists(), f'{page.name} links to {target}, which does not exist'
