"""Voice folders (issue 24, deliverable 3): ``--hf-repo nvidia/personaplex-7b-v1`` finds the voices of the
repository's ``voices.tgz`` in a fake Hugging Face cache, extracted once beside it (as NVIDIA's code does), never
outside the folder; voices are found by name as NVIDIA's server joins them; the default model answers NVIDIA's
names."""

import io
import os
import tarfile

import pytest
from helpers import fake_repo

from duplex.errors import PromptError
from duplex.runtime import voices
from duplex.runtime.checkpoints import KYUTAI_NAMES, SHIPPED_VOICES, ModelFiles

KYUTAI_FILES = {name: b"x" for name in KYUTAI_NAMES.values()}


def _tgz(entries):
    """A gzip tar of (name, bytes) regular files, or TarInfo objects as given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
                continue
            name, data = entry
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


NVIDIA_ARCHIVE = [("voices/NATF0.pt", b"natf0"), ("voices/NATM1.pt", b"natm1"), ("voices/NATF0.wav", b"wav")]


@pytest.mark.parametrize("repo", ["nvidia/personaplex-7b-v1", "kyutai/personaplex-rl-seamless"])
def test_the_repositorys_voices_are_found_and_extracted_once(tmp_path, repo):
    pytest.importorskip("huggingface_hub")
    snap = fake_repo(tmp_path, repo, {**KYUTAI_FILES, "voices.tgz": _tgz(NVIDIA_ARCHIVE)})
    files = ModelFiles.from_hf_cache(repo, cache_dir=str(tmp_path))
    folder = snap / "voices"
    assert files.voice_prompts == (str(folder),)  # beside the archive, where NVIDIA's code extracts it too
    assert (folder / "NATF0.pt").read_bytes() == b"natf0"
    assert voices.find_voice("NATM1.pt", files.voice_prompts) == str(folder / "NATM1.pt")
    assert voices.find_voice("NATF0", files.voice_prompts) == str(folder / "NATF0.pt")  # .pt may be left out
    stamp = os.stat(folder / "NATF0.pt").st_mtime_ns
    (snap / "voices.tgz").write_bytes(b"not read again")
    assert ModelFiles.from_hf_cache(repo, cache_dir=str(tmp_path)).voice_prompts == (str(folder),)
    assert os.stat(folder / "NATF0.pt").st_mtime_ns == stamp
    assert not [p for p in snap.iterdir() if p.name.startswith(".voices-")]  # no work folder left behind


def test_a_repository_without_its_voices_has_none_and_says_how_to_get_them(tmp_path):
    pytest.importorskip("huggingface_hub")
    fake_repo(tmp_path, "nvidia/personaplex-7b-v1", KYUTAI_FILES)
    files = ModelFiles.from_hf_cache("nvidia/personaplex-7b-v1", cache_dir=str(tmp_path))
    assert files.voice_prompts == ()
    with pytest.raises(PromptError, match="no voice folder"):
        voices.find_voice("NATF0.pt", files.voice_prompts)


def test_a_broken_archive_leaves_the_model_loadable_and_is_told_when_a_voice_is_asked(tmp_path):
    pytest.importorskip("huggingface_hub")
    snap = fake_repo(tmp_path, "nvidia/personaplex-7b-v1", {**KYUTAI_FILES, "voices.tgz": b"truncated"})
    files = ModelFiles.from_hf_cache("nvidia/personaplex-7b-v1", cache_dir=str(tmp_path))
    assert files.voice_prompts == (str(snap / "voices.tgz"),)
    with pytest.raises(PromptError, match="voices.tgz: cannot extract its voices"):
        voices.find_voice("NATF0.pt", files.voice_prompts)


@pytest.mark.parametrize("entry", [
    ("../evil.pt", b"x"), ("/tmp/evil.pt", b"x"), ("voices/../../evil.pt", b"x"), ("voices/sub/../../../e", b"x")])
def test_an_archive_reaching_outside_is_refused(tmp_path, entry):
    pytest.importorskip("huggingface_hub")
    snap = fake_repo(tmp_path, "nvidia/personaplex-7b-v1", {**KYUTAI_FILES,
                                                             "voices.tgz": _tgz(NVIDIA_ARCHIVE + [entry])})
    files = ModelFiles.from_hf_cache("nvidia/personaplex-7b-v1", cache_dir=str(tmp_path))
    with pytest.raises(PromptError, match="points outside the folder"):
        voices.find_voice("NATF0.pt", files.voice_prompts)
    assert not (snap / "voices").exists() and not (tmp_path / "evil.pt").exists()


def test_links_and_archives_without_voices_are_refused(tmp_path):
    link = tarfile.TarInfo("voices/NATF1.pt")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = tmp_path / "a" / "voices.tgz"
    archive.parent.mkdir()
    archive.write_bytes(_tgz(NVIDIA_ARCHIVE + [link]))
    with pytest.raises(PromptError, match="link or a special file"):
        voices.voice_folder(archive)
    archive.write_bytes(_tgz([("other/NATF0.pt", b"x")]))
    with pytest.raises(PromptError, match="no voices/ folder"):
        voices.voice_folder(archive)
    archive.write_bytes(b"garbage")
    with pytest.raises(PromptError, match="cannot extract"):
        voices.voice_folder(archive)
    assert sorted(p.name for p in archive.parent.iterdir()) == ["voices.tgz"]


def test_a_read_only_cache_extracts_into_duplexs_cache(tmp_path, monkeypatch):
    archive = tmp_path / "ro" / "voices.tgz"
    archive.parent.mkdir()
    archive.write_bytes(_tgz(NVIDIA_ARCHIVE))
    monkeypatch.setenv(voices.CACHE_ENV, str(tmp_path / "mine"))
    monkeypatch.setattr(voices.os, "access", lambda path, mode: False)
    folder = voices.voice_folder(archive)
    assert folder.startswith(str(tmp_path / "mine")) and os.path.isfile(os.path.join(folder, "NATM1.pt"))
    assert voices.voice_folder(archive) == folder
    assert not (archive.parent / "voices").exists()


def test_finding_voices(tmp_path):
    (tmp_path / "NATF0.pt").write_bytes(b"x")
    (tmp_path / "me.wav").write_bytes(b"x")
    assert voices.find_voice(str(tmp_path / "me.wav")) == str(tmp_path / "me.wav")  # a path is a path
    with pytest.raises(PromptError, match=r"'VARF9.pt' not found in .*voices there: NATF0.pt, me.wav"):
        voices.find_voice("VARF9.pt", [tmp_path])
    with pytest.raises(PromptError, match="not found"):
        voices.find_voice("../NATF0.pt", [tmp_path / "x"])  # names are names, never paths out of the folder


def test_the_default_model_answers_nvidias_names():
    files = ModelFiles.default()
    assert files.voice_prompts == (SHIPPED_VOICES,)
    assert voices.list_voices(files.voice_prompts) == sorted(f"{n}.pt" for n in voices.NVIDIA_VOICE_NAMES)
    assert sum(os.path.getsize(os.path.join(SHIPPED_VOICES, n)) for n in os.listdir(SHIPPED_VOICES)) < 1_000_000
    assert set(voices.DEFAULT_VOICES) == set(voices.NVIDIA_VOICE_NAMES)
