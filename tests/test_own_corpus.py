"""The README's "Train on your own corpus" path, followed as written on a small folder-per-label corpus.

The corpus is real media written with PyAV: MP4 clips of the astronaut's face (scikit-image; a
real face, so MTCNN finds it) with a voiced tone, in ``<label>/<speaker>_<n>.mp4``. The test
reads the README's first ``bash`` block of that section and runs every command in it through the
real CLI, changing only the corpus root (``/data/mine``) and capping training epochs. The fast
variant lets cheap extractors (MFCC, HOG) stand in for the pretrained ones under the same store
names; the slow one runs the commands unchanged on random weights of the real architectures.
Also: corpora that cannot be validated or tested are refused by ``prepare`` and ``fit``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

try:  # tests/ on sys.path (pytest's default) or the repository root (tests as a package)
    from test_configs import _restore_global_torch_state, random_weights  # noqa: F401
except ImportError:
    from tests.test_configs import _restore_global_torch_state, random_weights  # noqa: F401

from lightning_emo.cli import main
from lightning_emo.data.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[1]
README_ROOT = "/data/mine"
CLASSES = ("angry", "happy", "sad")
EPOCHS = ["--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false"]
# cheap stand-ins that write the store the README's configs read (same --name)
STAND_INS = {"hubert_base": ["mfcc"], "facenet_vggface2": ["hog"]}


def readme_commands() -> list[list[str]]:
    """The ``lightning-emo`` commands of the README's own-corpus block, in order (arguments after the name)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Train on your own corpus"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    joined = re.sub(r"\\\n\s*", " ", block)
    commands = []
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith("lightning-emo "):
            commands.append(shlex.split(line, comments=True)[1:])
    return commands


def write_corpus(root: Path, speakers: int = 5, per_class: int = 2, seconds: float = 1.2) -> Path:
    """``root/<label>/spkNN_<n>.mp4``: the astronaut's face, moved and tinted per clip, over a voiced tone."""
    from skimage import data as skdata

    from lightning_emo.data.media import write_video

    face = skdata.astronaut()[20:276, 96:352]  # 256 x 256 around the face
    rng = np.random.default_rng(0)
    fps, sr = 10, 16000
    for ci, label in enumerate(CLASSES):
        for s in range(speakers):
            for n in range(per_class):
                frames = []
                for t in range(int(seconds * fps)):
                    dy, dx = rng.integers(0, 32, size=2)
                    crop = face[dy:dy + 224, dx:dx + 224][::2, ::2].astype(np.float32)  # 112 x 112
                    crop[..., ci] = np.clip(crop[..., ci] * 1.15, 0, 255)
                    frames.append(crop.astype(np.uint8))
                time = np.arange(int(seconds * sr)) / sr
                f0 = 110 + 40 * ci + 15 * s
                audio = 0.3 * np.sin(2 * np.pi * f0 * time) * (0.6 + 0.4 * np.sin(2 * np.pi * (2 + ci) * time))
                audio = audio + 0.01 * rng.standard_normal(time.size)
                write_video(root / label / f"spk{s + 1:02d}_{n}.mp4", np.stack(frames), fps, audio=audio.astype(np.float32),
                            sample_rate=sr, threads=1)
    return root


def run_readme(corpus: Path, stand_ins: dict[str, list[str]] | None) -> None:
    commands = readme_commands()
    names = [c[0] for c in commands]
    assert names[0] == "prepare" and "--corpus" in commands[0] and "folder" in commands[0]
    assert {"extract", "fit", "predict", "fuse"} <= set(names), names
    for args in commands:
        args = [a.replace(README_ROOT, str(corpus)) for a in args]
        if args[0] == "extract" and stand_ins:
            extractor = args[args.index("--extractor") + 1]
            if extractor in stand_ins:
                i = args.index("--extractor")
                args[i + 1:i + 2] = stand_ins[extractor]
                while "--option" in args:  # the pretrained extractor's options
                    j = args.index("--option")
                    del args[j:j + 2]
                args += ["--name", extractor]
        if args[0] == "extract":
            args += ["--num-workers", "0", "--trainer.accelerator", "cpu"]
        if args[0] == "fit":
            args += EPOCHS + ["--trainer.accelerator", "cpu"]
        assert main(args) == 0, f"README command failed: lightning-emo {shlex.join(args)}"


def check_results() -> None:
    manifest = read_manifest("data/mine/manifest.csv")
    splits = {s: {c.speaker for c in manifest.clips if c.split == s} for s in ("train", "val", "test")}
    assert all(splits.values()) and not (splits["train"] & splits["val"] or splits["train"] & splits["test"]
                                         or splits["val"] & splits["test"])
    for run in ("hubert", "facenet"):
        assert Path(f"runs/{run}/version_0/predictions.csv").is_file()
    results = Path("runs/fusion/results.md")
    assert results.is_file() and "Best:" in results.read_text()


def test_the_readme_block_is_the_folder_corpus_path(tmp_path, capsys):
    """The fast part: the block's shape, and its `prepare` command run as written (speaker-independent splits)."""
    commands = readme_commands()
    prepare = commands[0]
    assert prepare[prepare.index("--option") + 1].startswith("speaker_pattern=")
    fits = [c for c in commands if c[0] == "fit"]
    assert [c[c.index("--config") + 1] for c in fits] == ["experiment/hubert.yaml", "experiment/facenet.yaml"]
    corpus = write_corpus(tmp_path / "mine", speakers=5, per_class=1, seconds=0.4)
    assert main([a.replace(README_ROOT, str(corpus)) for a in prepare]) == 0
    assert "speaker-independent" in capsys.readouterr().out
    manifest = read_manifest("data/mine/manifest.csv")
    assert {c.speaker for c in manifest.clips} == {f"spk{i:02d}" for i in range(1, 6)}
    splits = {s: {c.speaker for c in manifest.clips if c.split == s} for s in ("train", "val", "test")}
    assert all(splits.values()) and sum(map(len, splits.values())) == 5  # no speaker in two splits


@pytest.mark.slow  # ~15 s of CPU: two extractions, two trainings, two predictions and a fusion
def test_the_readme_own_corpus_path_with_cheap_stand_in_extractors(tmp_path):
    corpus = write_corpus(tmp_path / "mine", speakers=3, per_class=1, seconds=0.8)
    run_readme(corpus, STAND_INS)
    check_results()
    assert '"mfcc"' in Path("data/mine/features/hubert_base/store.json").read_text()  # the stand-in wrote it


@pytest.mark.slow
def test_the_readme_own_corpus_path_as_written(tmp_path, monkeypatch):
    """Every command unchanged: HuBERT and facenet (random weights of the real architectures, where they load from)."""
    random_weights({"hubert_base", "facenet_vggface2"}, {}, tmp_path, monkeypatch)
    corpus = write_corpus(tmp_path / "mine", speakers=3, per_class=1, seconds=0.8)
    run_readme(corpus, None)
    check_results()


# ------------------------------------------------------------------------------------ refusals


def _prepare(corpus: Path, *extra: str) -> int:
    return main(["prepare", "--corpus", "folder", "--root", str(corpus), "--out", "data/m/manifest.csv", *extra])


@pytest.mark.parametrize("case", ["two speakers", "no speakers, one clip per class"])
def test_prepare_refuses_a_corpus_left_without_validation_or_test_clips(case, tmp_path, capsys):
    if case == "two speakers":
        corpus, extra, hint = write_corpus(tmp_path / "c", speakers=2, per_class=1, seconds=0.4), \
            ["--option", "speaker_pattern=^([^_]+)_"], "only 2 speaker(s)"
    else:
        corpus, extra, hint = write_corpus(tmp_path / "c", speakers=1, per_class=1, seconds=0.4), [], \
            "speaker_pattern=REGEX"
    assert _prepare(corpus, *extra) == 2
    err = capsys.readouterr().err
    assert "no clips in split" in err and hint in err and "Nothing was written" in err, err
    assert not Path("data/m/manifest.csv").exists()


def test_a_small_corpus_without_speakers_still_gets_every_split(tmp_path, capsys):
    """Stratified clip splits round the running totals: 5 clips per class still give validation clips."""
    corpus = write_corpus(tmp_path / "c", speakers=5, per_class=1, seconds=0.4)
    assert _prepare(corpus) == 0
    manifest = read_manifest("data/m/manifest.csv")
    counts = {s: sum(c.split == s for c in manifest.clips) for s in ("train", "val", "test")}
    assert all(counts.values()) and sum(counts.values()) == 15, counts
    assert "no clip names a speaker" in capsys.readouterr().err  # said, not hidden
    for label in CLASSES:
        assert any(c.split == "train" for c in manifest.clips if c.label == label)
def test_fit_refuses_a_corpus_without_validation_clips_before_training(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c", speakers=3, per_class=1, seconds=0.4)
    assert _prepare(corpus, "--ratios", "0.8", "0", "0.2") == 0  # no validation asked for: written, warned
    assert main(["extract", "--manifest", "data/m/manifest.csv", "--extractor", "mfcc", "--out", "data/m/features",
                 "--num-workers", "0", "--trainer.accelerator", "cpu"]) == 0
    capsys.readouterr()
    # one paragraph (the CorpusError's message), exit status 2
    assert main(["fit", "--config", "experiment/compare.yaml", "--data.init_args.manifest", "data/m/manifest.csv",
                 "--data.init_args.features", "data/m/features/mfcc", *EPOCHS]) == 2
    message = capsys.readouterr().err
    assert message.startswith("lightning-emo fit: error: ") and "Traceback" not in message
    assert "'val'" in message and "speaker_pattern" in message and "--ratios" in message
    assert not list(Path("runs").rglob("*.ckpt"))  # refused before training
