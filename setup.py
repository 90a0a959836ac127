"""Package metadata for petbreeds, read from settings.ini (the nbdev 2 layout).

settings.ini is the single source of the name, version, requirements and the
`petbreeds` console script; this file only turns it into setuptools' arguments.
"""
from configparser import ConfigParser

import setuptools
from packaging.version import Version

config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

for key in 'version description keywords author author_email license git_url lib_name user min_python'.split():
    if key not in cfg: raise SystemExit(f"settings.ini has no '{key}'; add it under [DEFAULT]")

# SPDX names for settings.ini's nbdev license keys (setuptools deprecated license classifiers).
licenses = {'apache2': 'Apache-2.0', 'mit': 'MIT', 'gpl3': 'GPL-3.0-or-later', 'bsd3': 'BSD-3-Clause'}
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']
min_python = cfg['min_python']
py_versions = [v for v in ['3.11', '3.12', '3.13'] if Version(v) >= Version(min_python)]

def reqs(key): return cfg.get(key, '').split()

EXTRAS = ('onnx', 'openvino', 'serve', 'timm', 'weights', 'distributed', 'tracking')   # each has a `<name>_requirements` line in settings.ini

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    keywords=cfg['keywords'],
    author=cfg['author'],
    author_email=cfg['author_email'],
    license=licenses.get(cfg['license'].lower(), cfg['license']),
    url=cfg['git_url'],
    classifiers=[
        'Development Status :: ' + statuses[int(cfg['status'])],
        'Intended Audience :: ' + cfg['audience'].title(),
        'Natural Language :: ' + cfg['language'].title(),
    ] + ['Programming Language :: Python :: ' + v for v in py_versions],
    packages=setuptools.find_packages(include=[cfg['lib_name'], cfg['lib_name'] + '.*']),
    include_package_data=True,
    python_requires='>=' + min_python,
    install_requires=reqs('requirements'),
    extras_require={'dev': list(dict.fromkeys(reqs('dev_requirements') + [r for extra in EXTRAS for r in reqs(f'{extra}_requirements')])),   # once each
                    **{extra: reqs(f'{extra}_requirements') for extra in EXTRAS}},
    entry_points={
        'console_scripts': reqs('console_scripts'),
        'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
    },
    zip_safe=False,
)
