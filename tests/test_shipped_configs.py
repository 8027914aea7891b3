"""Shipped configs by name from any folder: resolution, ``--config`` in every command, ``lightning-emo configs``."""

from __future__ import annotations

import pytest
import yaml

try:  # tests/ on sys.path (pytest's default) or the repository root (tests as a package)
    from test_configs import CONFIGS, _restore_global_torch_state, synthetic  # noqa: F401
except ImportError:
    from tests.test_configs import CONFIGS, _restore_global_torch_state, synthetic  # noqa: F401

from lightning_emo.cli import main
from lightning_emo.configs import (ConfigNotFoundError, config_dir, list_configs, resolve_config,
                                   resolve_config_args)


def test_the_checkout_configs_are_the_shipped_ones():
    assert config_dir() == CONFIGS
    assert list_configs() == sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml"))
    assert "experiment/synthetic_audio.yaml" in list_configs("experiment")
    assert all(n.startswith("model/") for n in list_configs("configs/model"))


@pytest.mark.parametrize("name", ["experiment/synthetic_audio.yaml", "configs/experiment/synthetic_audio.yaml",
                                  "experiment/synthetic_audio", "./configs/experiment/synthetic_audio.yaml"])
def test_a_shipped_name_resolves_from_any_folder(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the autouse fixture already did; say it
    assert resolve_config(name) == CONFIGS / "experiment" / "synthetic_audio.yaml"
    assert resolve_config_args(["fit", "--config", name]) == ["fit", "--config",
                                                             str(CONFIGS / "experiment" / "synthetic_audio.yaml")]
    assert resolve_config_args(["fit", f"--config={name}"]) == [
        "fit", f"--config={CONFIGS / 'experiment' / 'synthetic_audio.yaml'}"]


def test_a_local_file_wins_over_a_shipped_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "experiment" / "synthetic_audio.yaml"
    local.parent.mkdir()
    local.write_text("trainer: {max_epochs: 1}\n")
    assert resolve_config("experiment/synthetic_audio.yaml") == local.relative_to(tmp_path)
    assert resolve_config_args(["--config", "experiment/synthetic_audio.yaml", "-c", "model/blstm.yaml"]) == [
        "--config", "experiment/synthetic_audio.yaml", "-c", str(CONFIGS / "model" / "blstm.yaml")]


@pytest.mark.parametrize("name", ["experiment/synthetic_audoi.yaml", "synthetic_audio.yaml", "nothing/here.yml"])
def test_an_unknown_name_says_where_it_looked_and_what_exists(name, tmp_path):
    with pytest.raises(ConfigNotFoundError) as err:
        resolve_config_args(["fit", "--config", name])
    message = str(err.value)
    assert repr(name) in message and str(tmp_path) in message and "lightning-emo configs list" in message
    if "synthetic_aud" in name:
        assert "experiment/synthetic_audio.yaml" in message  # the near name


def test_inline_yaml_and_other_arguments_pass_untouched():
    argv = ["fit", "--config", "{trainer: {max_epochs: 1}}", "--trainer.max_epochs", "experiment/x.yaml",
            "--print_config"]
    assert resolve_config_args(argv) == argv


def test_fit_takes_shipped_names_and_fragments_from_an_empty_folder(tmp_path, capsys):
    """The LightningCLI resolves names before parsing: an experiment plus a fragment on top of it."""
    with pytest.raises(SystemExit):
        main(["fit", "--config", "experiment/synthetic_audio.yaml", "--config", "configs/model/blstm.yaml",
              "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["trainer"]["logger"]["init_args"]["name"] == "synthetic_audio"
    assert config["model"]["init_args"]["head"] == "blstm"


def test_fit_runs_a_shipped_config_by_name(synthetic, tmp_path):
    assert main(["fit", "--config", "experiment/synthetic_face.yaml",
                 "--data.init_args.manifest", str(synthetic / "manifest.csv"),
                 "--data.init_args.features", str(synthetic / "features" / "hog"),
                 "--trainer.fast_dev_run=true", "--trainer.accelerator", "cpu",
                 "--trainer.enable_progress_bar=false"]) == 0


def test_reproduce_resolves_its_config_and_the_train_configs_inside_it(tmp_path, capsys):
    from lightning_emo.pipeline import Protocol, _parser

    with pytest.raises(SystemExit):
        main(["reproduce", "--config", "reproduce/synthetic.yaml", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["audio"]["mfcc"]["train_config"] == "configs/experiment/synthetic_audio.yaml"
    # the protocol's own train configs are named the same way, and resolve from this empty folder
    parser = _parser()
    cfg = parser.instantiate(parser.parse_args(resolve_config_args(["--config", "reproduce/cheavd.yaml"])))
    protocol = Protocol(**{k: cfg[k] for k in Protocol.__dataclass_fields__})
    for fs in [*protocol.audio.values(), *protocol.video.values()]:
        assert resolve_config(fs.train_config).is_relative_to(CONFIGS)
    assert resolve_config(Protocol().train_config) == CONFIGS / "experiment" / "synthetic_audio.yaml"


def test_configs_command_lists_shows_and_copies(tmp_path, capsys):
    assert main(["configs"]) == 0 and main(["configs", "list", "experiment"]) == 0
    listed = capsys.readouterr().out
    assert "experiment/synthetic_audio.yaml" in listed and "Synthetic corpus, audio" in listed
    assert main(["configs", "show", "experiment/synthetic_audio.yaml"]) == 0
    assert capsys.readouterr().out == (CONFIGS / "experiment" / "synthetic_audio.yaml").read_text()

    assert main(["configs", "copy", "experiment/synthetic_audio.yaml", "mine.yaml"]) == 0
    assert (tmp_path / "mine.yaml").read_text() == (CONFIGS / "experiment" / "synthetic_audio.yaml").read_text()
    (tmp_path / "into").mkdir()
    assert main(["configs", "copy", "configs/model/blstm.yaml", "into"]) == 0
    assert (tmp_path / "into" / "blstm.yaml").is_file()
    assert main(["configs", "copy", "trainer", "conf/trainer"]) == 0
    assert sorted(p.name for p in (tmp_path / "conf" / "trainer").iterdir()) == sorted(
        p.name for p in (CONFIGS / "trainer").glob("*.yaml"))
    assert main(["configs", "copy", "all", "tree"]) == 0
    assert sorted(p.relative_to(tmp_path / "tree").as_posix() for p in (tmp_path / "tree").rglob("*.yaml")) == \
        list_configs()

    # nothing is overwritten unless asked
    (tmp_path / "mine.yaml").write_text("# edited\n")
    with pytest.raises(FileExistsError, match="--overwrite"):
        main(["configs", "copy", "experiment/synthetic_audio.yaml", "mine.yaml"])
    assert (tmp_path / "mine.yaml").read_text() == "# edited\n"
    assert main(["configs", "copy", "experiment/synthetic_audio.yaml", "mine.yaml", "--overwrite"]) == 0
    assert (tmp_path / "mine.yaml").read_text().startswith("# Synthetic corpus")
    # `show` reads shipped configs only, and names the near ones
    capsys.readouterr()
    assert main(["configs", "show", "experiment/synthetic_fase.yaml"]) == 2
    assert "experiment/synthetic_face.yaml" in capsys.readouterr().err


def test_help_says_configs_ship(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "configs" in out and "experiment/" in out and "lightning-emo configs list" in out
    for command in (["fit"], ["reproduce"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        assert "lightning-emo configs list" in " ".join(capsys.readouterr().out.split()), command
