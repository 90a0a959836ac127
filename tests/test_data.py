"""get_pets against a loopback server, and `petbreeds check` end to end."""
import hashlib
import json
from pathlib import Path

import pytest

from petbreeds.core import PetbreedsError
from petbreeds.data import BREEDS, get_pets, pets_dataloaders, check_images
from petbreeds.testing import BAD_QUIRKS, pets_archive, serve_folder, synthetic_pets
from test_cli import assert_one_line_error, petbreeds_cmd

def snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else 'folder'
            for p in sorted(Path(folder).rglob('*'))}

@pytest.fixture(scope='module')
def served(tmp_path_factory):
    "A folder served on loopback holding a good archive, a corrupt one and a truncated one"
    root = tmp_path_factory.mktemp('served')
    good = pets_archive(root/'oxford-iiit-pet.tgz', per_class=2, size=48)
    (root/'corrupt').mkdir(); (root/'corrupt'/'oxford-iiit-pet.tgz').write_bytes(b'not a gzip file at all' * 100)
    data = good.read_bytes()
    (root/'short').mkdir(); (root/'short'/'oxford-iiit-pet.tgz').write_bytes(data[:len(data) // 2])
    (root/'empty').mkdir(); pets_archive(root/'empty'/'build.tgz', per_class=1, size=32)
    return root

def test_download_unpacks_once_and_second_call_makes_no_request(served, tmp_path):
    with serve_folder(served) as server:
        url = server.url + 'oxford-iiit-pet.tgz'
        images = get_pets(tmp_path, url=url)
        assert images == tmp_path/'oxford-iiit-pet'/'images'
        assert (tmp_path/'oxford-iiit-pet'/'annotations'/'list.txt').exists()
        assert len(list(images.glob('*.jpg'))) == 37 * 2
        assert server.requests == ['/oxford-iiit-pet.tgz']
        before = snapshot(images)
        assert get_pets(tmp_path, url=url) == images
        assert server.requests == ['/oxford-iiit-pet.tgz'], "the second call used the unpacked folder"
        # and nothing get_pets, check or the DataLoaders did changed the images
        check_images(images)
        pets_dataloaders(images, bs=8, size=32, presize=48, num_workers=0, device='cpu').one_batch()
        assert snapshot(images) == before

def test_url_can_come_from_the_environment(served, tmp_path, monkeypatch):
    with serve_folder(served) as server:
        monkeypatch.setenv('PETBREEDS_PETS_URL', server.url + 'oxford-iiit-pet.tgz')
        monkeypatch.setenv('PETBREEDS_HOME', str(tmp_path/'home'))
        assert get_pets() == tmp_path/'home'/'oxford-iiit-pet'/'images'
        assert len(server.requests) == 1

@pytest.mark.hostile
@pytest.mark.parametrize('folder', ['corrupt', 'short'])
def test_bad_archive_is_a_clear_error_and_leaves_nothing_to_trust(served, tmp_path, folder):
    with serve_folder(served) as server:
        with pytest.raises(PetbreedsError, match='corrupt or incomplete') as info:
            get_pets(tmp_path, url=server.url + f'{folder}/oxford-iiit-pet.tgz')
    assert 'run again to download it afresh' in str(info.value)
    assert not (tmp_path/'oxford-iiit-pet').exists(), "no half-unpacked folder"
    assert not (tmp_path/'archive'/'oxford-iiit-pet.tgz').exists(), "the bad archive was deleted"

@pytest.mark.hostile
def test_download_that_breaks_off_is_a_clear_error(served, tmp_path):
    with serve_folder(served, cut_at=1000) as server:
        with pytest.raises(PetbreedsError, match="can't reach the Oxford-IIIT Pet archive") as info:
            get_pets(tmp_path, url=server.url + 'oxford-iiit-pet.tgz')
    assert 'retrieval incomplete' in str(info.value)
    assert not (tmp_path/'oxford-iiit-pet').exists()
    assert not list((tmp_path/'archive').glob('oxford-iiit-pet.tgz*[!k]')), 'no archive or .part left'

def test_missing_archive_is_a_clear_error(served, tmp_path):
    with serve_folder(served) as server:
        with pytest.raises(PetbreedsError, match="404"):
            get_pets(tmp_path, url=server.url + 'nothing-here.tgz')

def test_offline_real_url_says_what_to_do(tmp_path):
    with pytest.raises(PetbreedsError) as info:
        get_pets(tmp_path)
    msg = str(info.value)
    assert "can't reach the Oxford-IIIT Pet archive at https://s3.amazonaws.com/fast-ai-imageclas/oxford-iiit-pet.tgz" in msg
    assert '--demo' in msg and 'folder of Pets images' in msg
    assert '\n' not in msg

def test_unpacked_folder_without_images_is_not_trusted(tmp_path):
    (tmp_path/'oxford-iiit-pet'/'annotations').mkdir(parents=True)
    with pytest.raises(PetbreedsError, match='not an unpacked Pets archive'):
        get_pets(tmp_path, url='http://127.0.0.1:9/oxford-iiit-pet.tgz')

@pytest.fixture(scope='module')
def quirky(tmp_path_factory):
    return synthetic_pets(tmp_path_factory.mktemp('kit')/'images', per_class=2, size=48, quirks=True)

@pytest.mark.hostile
def test_check_names_each_bad_file_and_exits_1(quirky, subprocess_env):
    before = snapshot(quirky)
    res = petbreeds_cmd('check', quirky, env=subprocess_env)
    assert res.returncode == 1, res.stderr
    for name in [*BAD_QUIRKS, 'IMG_1.jpg']: assert name in res.stdout
    assert 'Abyssinian_100.mat' in res.stdout  # reported as ignored
    assert res.stdout.strip().endswith('3 problems found')
    assert snapshot(quirky) == before

def test_check_json_is_one_document(quirky, subprocess_env):
    res = petbreeds_cmd('check', quirky, '--json', env=subprocess_env)
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    assert doc['problems'] == 3 and doc['unmatched'] == ['IMG_1.jpg']
    assert set(doc['unreadable']) == set(BAD_QUIRKS)
    assert set(doc['per_breed']) == set(BREEDS)

def test_check_clean_folder_exits_0(tmp_path, subprocess_env):
    clean = synthetic_pets(tmp_path/'images', per_class=1, size=32)
    res = petbreeds_cmd('check', clean, env=subprocess_env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert 'no problems found' in res.stdout

@pytest.mark.hostile
def test_check_bad_input_exits_2_with_one_line(tmp_path, subprocess_env):
    assert_one_line_error(petbreeds_cmd('check', tmp_path/'missing', env=subprocess_env), 'is not a folder')
    (tmp_path/'empty').mkdir()
    assert_one_line_error(petbreeds_cmd('check', tmp_path/'empty', env=subprocess_env), 'is empty')
    (tmp_path/'notes').mkdir(); (tmp_path/'notes'/'a.txt').write_text('x')
    assert_one_line_error(petbreeds_cmd('check', tmp_path/'notes', env=subprocess_env), 'holds no image files')

def test_check_without_dir_offline_says_how_to_go_on(subprocess_env):
    res = petbreeds_cmd('check', env=subprocess_env)
    assert_one_line_error(res, "can't reach the Oxford-IIIT Pet archive", '--demo')

def test_download_command_prints_the_images_folder(served, tmp_path, subprocess_env):
    with serve_folder(served) as server:
        env = {**subprocess_env, 'PETBREEDS_PETS_URL': server.url + 'oxford-iiit-pet.tgz'}
        res = petbreeds_cmd('download', '--dest', tmp_path, env=env)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == str(tmp_path/'oxford-iiit-pet'/'images')
        again = petbreeds_cmd('download', '--dest', tmp_path, env=env)
        assert again.stdout == res.stdout and len(server.requests) == 1
    assert_one_line_error(petbreeds_cmd('download', '--dest', tmp_path/'offline', env=subprocess_env), "can't reach the Oxford-IIIT Pet archive")

def test_a_relative_dest_is_under_the_working_directory(served, tmp_path, monkeypatch):
    "`--dest data` means ./data: fastai's downloader alone reads a relative folder as under ~/.fastai"
    monkeypatch.setenv('HOME', str(tmp_path/'home'))   # where a regression would write, kept inside the test's folder
    monkeypatch.chdir(tmp_path)
    with serve_folder(served) as server:
        images = get_pets('data', url=server.url + 'oxford-iiit-pet.tgz')
    assert images == Path('data/oxford-iiit-pet/images'), images   # as the user named it
    assert len(list((tmp_path/'data'/'oxford-iiit-pet'/'images').glob('*.jpg'))) == 37 * 2
    assert not (tmp_path/'home'/'.fastai'/'data'/'oxford-iiit-pet').exists()

# ---- hostile archives: nothing may be written outside the destination -------------------------------------

def _hostile_archive(path, kind, target):
    "A Pets-shaped .tgz with one member that tries to write or point outside the folder it is unpacked into"
    import io, tarfile
    def add(tar, name, data=b'x', **info):
        ti = tarfile.TarInfo(name); ti.size = len(data)
        for k, v in info.items(): setattr(ti, k, v)
        tar.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    with tarfile.open(path, 'w:gz') as tar:
        add(tar, 'oxford-iiit-pet/images/pug_1.jpg')
        if kind == 'absolute': add(tar, str(target), b'owned')
        elif kind == 'dotdot': add(tar, 'oxford-iiit-pet/' + '../' * 12 + str(target).lstrip('/'), b'owned')
        elif kind == 'symlink': add(tar, 'oxford-iiit-pet/images/Bengal_1.jpg', b'', type=tarfile.SYMTYPE, linkname=str(target))
        elif kind == 'dir-symlink':
            add(tar, 'oxford-iiit-pet/escape', b'', type=tarfile.SYMTYPE, linkname=str(target.parent))
            add(tar, f'oxford-iiit-pet/escape/{target.name}', b'owned')
        elif kind == 'hardlink': add(tar, 'oxford-iiit-pet/images/Bengal_1.jpg', b'', type=tarfile.LNKTYPE, linkname=str(target))
    return path

@pytest.mark.hostile
@pytest.mark.parametrize('kind', ['absolute', 'dotdot', 'symlink', 'dir-symlink', 'hardlink'])
def test_hostile_archive_writes_nothing_outside_the_destination(tmp_path, kind):
    """Members that escape by '../', by a link out of the folder, or through such a link are refused outright;
    an absolute name has its leading '/' taken off by tarfile's data filter, so it lands inside (and the result
    is then not a Pets folder)"""
    victim = tmp_path/'elsewhere'/'victim.txt'
    victim.parent.mkdir(); victim.write_text('precious')
    served = tmp_path/'served'; served.mkdir()
    _hostile_archive(served/'oxford-iiit-pet.tgz', kind, victim)
    dest = tmp_path/'dest'
    before = snapshot(tmp_path/'elsewhere')
    with serve_folder(served) as server:
        with pytest.raises(PetbreedsError) as info:
            get_pets(dest, url=server.url + 'oxford-iiit-pet.tgz')
    if kind == 'absolute':
        assert 'is not an unpacked Pets archive' in str(info.value)
        assert list(dest.rglob('victim.txt')) and all(dest in p.parents for p in dest.rglob('victim.txt'))
    else:
        assert 'was refused and deleted, nothing was kept' in str(info.value) and 'a folder of images you trust' in str(info.value)
        assert not (dest/'oxford-iiit-pet').exists() and not (dest/'archive'/'oxford-iiit-pet.tgz').exists()
    assert snapshot(tmp_path/'elsewhere') == before and victim.read_text() == 'precious'
    assert {p.name for p in tmp_path.iterdir()} <= {'dest', 'elsewhere', 'served', 'petbreeds_home'}
    import tarfile
    assert tarfile.TarFile.extraction_filter is None   # the filter was for the unpacking only

@pytest.mark.hostile
def test_download_command_refuses_a_hostile_archive_in_one_line(tmp_path, subprocess_env):
    served = tmp_path/'served'; served.mkdir()
    _hostile_archive(served/'oxford-iiit-pet.tgz', 'dotdot', tmp_path/'owned.txt')
    with serve_folder(served) as server:
        env = {**subprocess_env, 'PETBREEDS_PETS_URL': server.url + 'oxford-iiit-pet.tgz'}
        assert_one_line_error(petbreeds_cmd('download', '--dest', tmp_path/'dest', env=env), 'was refused and deleted')
    assert not (tmp_path/'owned.txt').exists()

@pytest.mark.hostile
def test_check_survives_looping_links_and_a_file_that_cant_be_read(tmp_path, subprocess_env):
    import os
    images = synthetic_pets(tmp_path/'images', per_class=1, size=32)
    before = snapshot(images)
    os.symlink('.', images/'loop'); os.symlink('..', images/'up')      # os.walk alone would never end
    os.symlink(tmp_path/'gone.jpg', images/'Bengal_2.jpg')              # a link to nothing: reading it fails
    links = {p.name: os.readlink(p) for p in images.iterdir() if p.is_symlink()}
    res = petbreeds_cmd('check', images, '--json', env=subprocess_env, timeout=300)
    assert res.returncode == 1, res.stderr
    report = json.loads(res.stdout)
    assert report['image_files'] == 38 and sum(report['per_breed'].values()) == 37
    assert list(report['unreadable']) == ['Bengal_2.jpg'] and "can't be read" in report['unreadable']['Bengal_2.jpg']
    assert report['duplicates'] == []
    assert {p.name: os.readlink(p) for p in images.iterdir() if p.is_symlink()} == links
    for link in links: os.unlink(images/link)
    assert snapshot(images) == before
