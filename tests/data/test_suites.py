"""Published task suites: download from an archive or a clone (never the network here), each file
checked against its pinned hash, then named as tasks (`site`, `site:antonym,...`)."""

import hashlib
import json
import tarfile
import urllib.error
import zipfile

import pytest

import tvjax
from tvjax.cli import main
from tvjax.data import TaskError, suites
from tvjax.data.suites import Suite, download, expand

COMMIT = "0123456789abcdef0123456789abcdef01234567"
WORDS = "apple river stone cloud green house light music ocean paper quiet sharp table water young zebra".split()


class Pinned(Suite):
    """The `site` suite with the hashes of the files a test made."""

    def files(self):
        return self.pinned


@pytest.fixture()
def published(tmp_path, monkeypatch):
    """A repository laid out as SITE's (two tasks with their splits), as a clone, a .tar.gz and a
    .zip (with GitHub's top folder), pinned in the `site` record; the cache in tmp."""
    monkeypatch.setenv("TVJAX_CACHE", str(tmp_path / "cache"))
    clone = tmp_path / "clone"
    files = {}
    for task, swap in (("antonym", str.upper), ("country-capital", str.title)):
        for split, words in (("train", WORDS), ("valid", WORDS[1::3]), ("test", WORDS[2::3])):
            path = f"dataset/{task}/{split}.json"
            (clone / path).parent.mkdir(parents=True, exist_ok=True)
            (clone / path).write_text(json.dumps([{"input": w, "output": swap(w)} for w in words]))
            files[path] = {"sha256": hashlib.sha256((clone / path).read_bytes()).hexdigest()}
    site = Pinned("site", "SNU-DRL/Soft_Injection", COMMIT, "folder", "Apache-2.0")
    object.__setattr__(site, "pinned", files)
    monkeypatch.setitem(suites.SUITES, "site", site)
    top = f"Soft_Injection-{COMMIT}"
    with tarfile.open(tmp_path / "site.tar.gz", "w:gz") as archive:
        archive.add(clone / "dataset", f"{top}/dataset")
    with zipfile.ZipFile(tmp_path / "site.zip", "w") as archive:
        for path in files:
            archive.write(clone / path, f"{top}/{path}")
    return {"clone": clone, "tar": tmp_path / "site.tar.gz", "zip": tmp_path / "site.zip", "files": files}


@pytest.mark.parametrize("source", ["tar", "zip", "clone"])
def test_a_suite_downloads_from_an_archive_or_a_clone_and_names_its_tasks(published, source):
    where = download("site", published[source])
    assert sorted(str(p.relative_to(where)) for p in where.rglob("*.json")) == sorted(published["files"])
    task = tvjax.load_task("site:antonym")
    assert task.name == "antonym" and task.test[0] == ("stone", "STONE") and len(task.train) == len(WORDS)
    assert [p.split("/")[-1] for p in expand("site")] == ["antonym", "country-capital"]
    assert [p.split("/")[-1] for p in expand("uppercase,site:country-capital,antonym")] == \
        ["uppercase", "country-capital", "antonym"]  # names after `site:` are the suite's


def test_a_file_that_is_not_the_pinned_one_is_refused_and_nothing_changes(published):
    download("site", published["clone"])
    before = {p: p.read_bytes() for p in suites.SUITES["site"].directory().rglob("*.json")}
    (published["clone"] / "dataset/antonym/test.json").write_text("[]")
    with pytest.raises(TaskError, match="dataset/antonym/test.json from .* has SHA-256 [0-9a-f]{64}, not the pinned"):
        download("site", published["clone"])
    assert {p: p.read_bytes() for p in suites.SUITES["site"].directory().rglob("*.json")} == before
    assert not any(p.name.endswith(".partial") for p in suites.SUITES["site"].directory().parent.iterdir())


def test_offline_the_error_names_the_url_and_the_from_route(published, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(suites.urllib.request, "urlopen", offline)
    with pytest.raises(TaskError, match=rf"cannot download https://codeload.github.com/SNU-DRL/Soft_Injection/tar.gz/"
                                        rf"{COMMIT} \(Name or service not known\).* with --from PATH"):
        download("site")
    with pytest.raises(TaskError, match="'site' is not downloaded: run `tvjax tasks download site`"):
        tvjax.load_task("site:antonym")


def test_the_command_line_downloads_and_takes_suite_tasks(published, capsys):
    assert main(["tasks", "download", "site", "--from", str(published["tar"])]) == 0
    assert "site: 2 tasks from SNU-DRL/Soft_Injection" in capsys.readouterr().out
    assert main(["fit", "--task", "site:nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no task 'nosuch'; its tasks: antonym, country-capital" in err
    assert main(["tasks"]) == 0
    assert "suite site: SNU-DRL/Soft_Injection at 0123456789ab, 2 tasks in" in capsys.readouterr().out


def test_the_pinned_records_cover_every_task_file():
    site, fv = (suites.SUITES[name].files() for name in ("site", "function-vectors"))
    assert len(site) == 57 * 3 and {p.rsplit("/", 1)[1] for p in site} == {"train.json", "valid.json", "test.json"}
    assert len(fv) == 57 and all(p.startswith(("dataset_files/abstractive/", "dataset_files/extractive/"))
                                 for p in fv)
    for pinned in [*site.values(), *fv.values()]:
        (kind, digest), = pinned.items()
        assert (kind, len(digest)) in {("sha256", 64), ("git_blob", 40)} and int(digest, 16) >= 0


def test_a_git_blob_pin_is_gits_own_object_id():
    hello = {"git_blob": "ce013625030ba8dba906f756967f9e9ca394464a"}  # `git hash-object` of "hello\n"
    suites._check(suites.SUITES["site"], "hello", b"hello\n", hello, None)
    with pytest.raises(TaskError, match="git blob id"):
        suites._check(suites.SUITES["site"], "hello", b"hello!\n", hello, None)
