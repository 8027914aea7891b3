"""Every shipped training config (configs/{experiment,trainer,logger,model}/) runs through the CLI with fast_dev_run.

Experiment configs say, in a comment, the ``lightning-emo extract`` command that makes their
feature store. The test runs that very command (through the real ``extract`` CLI) on a tiny
synthetic corpus, only redirecting ``--manifest``/``--out``, checks that the store lands where the
config's ``data.init_args.features`` points, then runs ``lightning-emo fit`` on it. Extractors
whose backbones need pretrained weights get random weights of the same architecture, put where
the real loading path looks (torch.hub's checkpoint cache, the Hugging Face cache read offline,
or a ``--weights`` file). Config fragments (trainer/, logger/, model/) run on top of the
synthetic audio experiment.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SYNTH = dict(clips_per_class=3, seed=0, size=64, max_speech=2.0)  # 21 clips, every split non-empty
EXTRACT_LINE = re.compile(r"^#\s+(lightning-emo extract .*)$")
FAST_EXTRACT = ["--num-workers", "0", "--batch-size", "8", "--trainer.accelerator", "cpu"]
# extractors with large random backbones (tens of millions of weights on 2 CPU cores): slow
HEAVY = {"wav2vec2_asr_base", "wav2vec2_base", "hubert_base", "timm", "facenet_vggface2"}


# LightningCLI configs of `lightning-emo fit`; configs/pretrain/ (pretraining) and configs/reproduce/
# (the `reproduce`/`demo` pipeline) belong to other commands and are tested with them.
CLI_DIRS = ("experiment", "trainer", "logger", "model")


def all_configs() -> list[Path]:
    return sorted(p for d in CLI_DIRS for p in (CONFIGS / d).rglob("*.yaml"))


def experiment_configs() -> list[Path]:
    return [p for p in all_configs() if p.parent.name == "experiment"]


def extract_commands(config: Path) -> list[list[str]]:
    """The documented ``lightning-emo extract`` commands of a config (arguments after ``extract``)."""
    out = []
    for line in config.read_text().splitlines():
        m = EXTRACT_LINE.match(line.strip())
        if m:
            out.append(shlex.split(m.group(1))[2:])
    return out


def _set(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    return args


def _value(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def run_documented_extract(config: Path, manifest: Path, out: Path, weights: dict[str, str] | None = None,
                           face_fps: str | None = None) -> None:
    """Run a config's documented extract commands on ``manifest`` into ``out`` (the real CLI, in-process)."""
    from lightning_emo.extractors.extract import main as extract_main

    commands = extract_commands(config)
    assert commands, f"{config.name} documents no `lightning-emo extract` command"
    for args in commands:
        args = _set(_set(args, "--manifest", str(manifest)), "--out", str(out))
        name = _value(args, "--extractor")
        if weights and name in weights:
            args = _set(args, "--weights", weights[name])
        if _value(args, "--fps") is not None or name in ("timm", "facenet_vggface2", "hog"):
            args = _set(args, "--detector", "none")  # the synthetic frames are the faces
            if face_fps:
                args = _set(args, "--fps", face_fps)
        assert extract_main(args + FAST_EXTRACT) == 0, f"extract failed: {args}"


def synthetic_corpus(root: Path) -> Path:
    """The tiny synthetic corpus (MP4 + manifest), made once per session directory."""
    from lightning_emo.data.synthetic import synthesize

    return synthesize(root, **SYNTH)


def config_data(config: Path) -> dict:
    return yaml.safe_load(config.read_text()).get("data", {}).get("init_args", {})


def fit(argv: list[str]) -> None:
    """``lightning-emo fit ...`` in this process."""
    from lightning_emo.cli import main

    assert main(["fit", *argv]) == 0


@pytest.fixture(autouse=True)
def _restore_global_torch_state(monkeypatch, tmp_path):
    """The CLI seeds and turns on deterministic algorithms process-wide; runs/ goes to a temp dir."""
    monkeypatch.chdir(tmp_path)
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> Path:
    """The tiny synthetic corpus with the mfcc and hog stores the synthetic experiments document."""
    root = tmp_path_factory.getbasetemp() / "synthetic-tiny"
    manifest = synthetic_corpus(root)
    for name in ("synthetic_audio.yaml", "synthetic_face.yaml"):
        run_documented_extract(CONFIGS / "experiment" / name, manifest, root / "features")
    return root


# ------------------------------------------------------------------------------------ weights


def _offline_hf_cache(monkeypatch, cache: Path) -> Path:
    import huggingface_hub

    cache.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def random_weights(extractors: set[str], options: dict[str, str], tmp: Path, monkeypatch) -> dict[str, str]:
    """Random weights of the same architecture where the real loading path looks; -> ``--weights`` paths."""
    from lightning_emo.extractors.base import torch_hub_checkpoint

    torch.manual_seed(0)
    explicit: dict[str, str] = {}
    for name in extractors:
        if name in ("wav2vec2_asr_base", "wav2vec2_base", "hubert_base"):
            from lightning_emo.extractors import ssl

            bundle = ssl.SSL_MODELS[name].bundle
            target = torch_hub_checkpoint(ssl.get_bundle(bundle)._path)
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.save(ssl.build_architecture(bundle).state_dict(), target)
        elif name == "facenet_vggface2":
            from facenet_pytorch import InceptionResnetV1

            target = Path(os.environ["TORCH_HOME"]) / "checkpoints" / "20180402-114759-vggface2.pt"  # facenet-pytorch's
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.save(InceptionResnetV1(classify=True, num_classes=8631).state_dict(), target)
        elif name == "timm":
            import timm
            from safetensors.torch import save_file

            try:
                from hf_cache import make_hf_cache
            except ImportError:
                from tests.hf_cache import make_hf_cache
            model_name = options["model_name"]
            path = tmp / "timm.safetensors"
            save_file({k: v.contiguous() for k, v in timm.create_model(model_name).state_dict().items()}, str(path))
            cfg = timm.models.get_pretrained_cfg(model_name)
            make_hf_cache(_offline_hf_cache(monkeypatch, tmp / "hf-hub"), cfg.hf_hub_id, {"model.safetensors": path})
        elif name in ("speech_dnn", "speech_bottleneck"):
            from lightning_emo.extractors.speech_dnn import SpeechDNN, save_speech_dnn

            dnn = SpeechDNN(num_outputs=40, bottleneck=60 if name == "speech_bottleneck" else None).eval()
            explicit[name] = str(save_speech_dnn(dnn, tmp / f"{name}.safetensors"))
    return explicit


def _extractors_of(config: Path) -> tuple[set[str], dict[str, str]]:
    names, options = set(), {}
    for args in extract_commands(config):
        names.add(_value(args, "--extractor"))
        for i, a in enumerate(args):
            if a == "--option":
                key, _, value = args[i + 1].partition("=")
                options[key] = value
    return names, options


# ------------------------------------------------------------------------------------ tests


def test_every_config_is_covered_and_documents_its_store():
    configs = all_configs()
    assert len(experiment_configs()) >= 8 and any(p.parent.name == "model" for p in configs)
    for config in experiment_configs():
        data = yaml.safe_load(config.read_text())["data"]
        if data["class_path"].endswith("FeatureDataModule"):
            commands = extract_commands(config)
            assert commands, f"{config.name}: say how its feature store is made"
            features = Path(data["init_args"]["features"])
            out = Path(_value(commands[0], "--out"))
            name = _value(commands[0], "--name") or _value(commands[0], "--extractor")
            select = _value(commands[0], "--select")
            assert features == out / (f"{name}-sel{select}" if select else name), config.name
            assert data["init_args"]["manifest"] == _value(commands[0], "--manifest"), config.name


def _params():
    out = []
    for config in experiment_configs():
        names, _ = _extractors_of(config)
        if config.name.startswith("cheavd_finetune"):
            names = {"wav2vec2_asr_base"}
        marks = [pytest.mark.slow] if names & HEAVY else []
        out.append(pytest.param(config, marks=marks, id=config.stem))
    return out


@pytest.mark.parametrize("config", _params())
def test_experiment_config_fast_dev_run(config, synthetic, tmp_path, monkeypatch):
    manifest = synthetic / "manifest.csv"
    names, options = _extractors_of(config)
    data = config_data(config)
    overrides = ["--data.init_args.manifest", str(manifest)]
    if config.name.startswith("cheavd_finetune"):  # raw clips through the (random) encoder
        random_weights({"wav2vec2_asr_base"}, {}, tmp_path, monkeypatch)
        overrides += ["--data.init_args.num_workers", "0", "--data.init_args.batch_size", "2"]
    else:
        if names <= {"mfcc", "hog"}:
            out = synthetic / "features"  # made by the session fixture with these very commands
        else:
            out = tmp_path / "features"
            weights = random_weights(names, options, tmp_path, monkeypatch)
            run_documented_extract(config, manifest, out, weights, face_fps="1")
        store = out / Path(data["features"]).name
        assert (store / "store.json").is_file(), f"the documented command did not make {store}"
        overrides += ["--data.init_args.features", str(store)]
    fit(["--config", str(config), *overrides, "--trainer.fast_dev_run=true", "--trainer.accelerator", "cpu"])


FRAGMENTS = [p for p in all_configs() if p.parent.name != "experiment"]


@pytest.mark.parametrize("fragment", [
    pytest.param(p, id=str(p.relative_to(CONFIGS)),
                 marks=[pytest.mark.slow] if p.name == "ddp.yaml" else []) for p in FRAGMENTS])
def test_fragment_on_the_synthetic_experiment(fragment, synthetic, tmp_path):
    args = ["--config", str(CONFIGS / "experiment" / "synthetic_audio.yaml"), "--config", str(fragment),
            "--data.init_args.manifest", str(synthetic / "manifest.csv"),
            "--data.init_args.features", str(synthetic / "features" / "mfcc"),
            "--trainer.fast_dev_run=true", "--trainer.accelerator", "cpu"]
    if fragment.name == "ddp.yaml":  # DDP re-launches the command: run it as a subprocess
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.run([sys.executable, "-m", "lightning_emo.cli", "fit", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return
    fit(args)
