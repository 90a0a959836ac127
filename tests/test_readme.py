"""README.md is generated from nbs/index.ipynb, and CI runs exactly the commands it gives a new user.

Regenerate README.md after editing the notebook: `python tests/test_readme.py --write` (nbdev_readme does the
same where Quarto is installed; it cannot be installed offline).
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
COMMANDS = ('pip install -e ".[dev]" && petbreeds train --demo', 'nbdev_test && pytest tests -n 2 --dist loadfile')
PYTEST = COMMANDS[1].split(' && ')[1]   # the README's pytest command, which CI runs with its own extra flags

def render_index() -> str:
    "The markdown cells of nbs/index.ipynb, in order, as README.md holds them"
    cells = json.loads((ROOT/'nbs'/'index.ipynb').read_text())['cells']
    return '\n\n'.join(''.join(c['source']).strip() for c in cells if c['cell_type'] == 'markdown') + '\n'

def test_readme_is_the_index_notebook():
    assert (ROOT/'README.md').read_text() == render_index(), "README.md is stale: run python tests/test_readme.py --write"

def test_readme_gives_exactly_the_two_commands():
    readme = (ROOT/'README.md').read_text()
    for command in COMMANDS: assert f"```sh\n{command}\n```" in readme

def test_ci_runs_what_the_readme_says():
    ci = (ROOT/'.ci'/'run').read_text()
    assert COMMANDS[0] in ci.splitlines(), "CI must install with the README's command, verbatim"
    assert any(l.startswith('nbdev_test') and '--n_workers' not in l for l in ci.splitlines()), "CI runs plain nbdev_test, as the README says"
    assert any(l.startswith(f'python -m {PYTEST}') for l in ci.splitlines()), "CI runs pytest as the README says (two at a time)"

def reading_order() -> list:
    "The notebooks named in README's Learn table, in its order"
    import re
    table = render_index().split('| Notebook | What it teaches | CPU |', 1)[1].split('\n\n', 1)[0]
    return [name for row in table.splitlines()[2:] for name in re.findall(r'`(\d\d\w*)`', row.split('|')[1])]

def test_the_sidebar_and_the_learn_table_agree_and_list_every_notebook():
    import re
    sidebar = re.findall(r'^\s*- (\S+)\.ipynb$', (ROOT/'nbs'/'sidebar.yml').read_text(), flags=re.M)
    assert sidebar == ['index', *reading_order()], "nbs/sidebar.yml and README's Learn table list the notebooks in another order"
    assert sorted(sidebar) == sorted(p.stem for p in (ROOT/'nbs').glob('*.ipynb')), "every notebook is in the sidebar once"
    settings = (ROOT/'settings.ini').read_text()
    assert re.search(r'^custom_sidebar = True$', settings, flags=re.M), "nbdev would write its own sidebar, by file name"

def test_every_guarantee_names_tests_that_exist_and_are_marked_hostile():
    "Each test the README's Guarantees section names is a test in tests/, so a promise can't outlive its proof"
    import re
    section = (ROOT/'README.md').read_text().split('## Guarantees', 1)[1].split('\n## ', 1)[0]
    named = set(re.findall(r'`(test_\w+)`', section))
    assert len(named) >= 15, named
    source = '\n'.join(p.read_text() for p in (ROOT/'tests').glob('test_*.py'))
    defined = {name: marks for marks, name in re.findall(r'((?:@pytest\.mark\..*\n)*)def (test_\w+)\(', source)}
    assert not named - set(defined), f"the README names tests that don't exist: {sorted(named - set(defined))}"
    hostile_file = (ROOT/'tests'/'test_hostile.py').read_text()
    unmarked = [n for n in named if 'hostile' not in defined[n] and f'def {n}(' not in hostile_file]
    assert not unmarked, f"guarantee tests without the hostile mark: {unmarked}"

if __name__ == '__main__' and '--write' in sys.argv:
    (ROOT/'README.md').write_text(render_index())
    print('README.md written from nbs/index.ipynb')
