from pathlib import Path

import pytest

from brainmri.config import Config, SlurmConfig, TrainConfig, config_from_yaml, load_config, nearest_key, to_yaml
from brainmri.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"


def test_defaults_then_recipe_then_overrides():
    cfg = load_config(["recipe=cnn3_256", "optim.lr=1e-3", "train.epochs=3"], RECIPES)
    assert cfg.recipe == "cnn3_256"
    assert cfg.model.name == "cnn3"  # from the recipe
    assert cfg.optim.lr == pytest.approx(1e-3)  # override beats recipe (7e-4)
    assert cfg.train.epochs == 3
    assert cfg.data.val_fraction == 0.1  # dataclass default
    assert isinstance(cfg.optim.lr, float)


@pytest.mark.parametrize(
    "arg, expected",
    [
        ("optim.lrr=1", "did you mean 'optim.lr'"),
        ("data.img_size=3", "did you mean 'data.image_size'"),
        ("trian.epochs=3", "unknown key 'trian'.*did you mean 'train'"),
        ("model.nmae=x", "did you mean 'model.name'"),
    ],
)
def test_unknown_key_names_nearest(arg, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config([arg], RECIPES)


@pytest.mark.parametrize(
    "arg, expected",
    [
        ("optim.lr=abc", "optim.lr"),
        ("train.epochs=2.5", "train.epochs"),
        ("optim.lr=-1", "optim.lr=-1.0 is invalid: expected a positive learning rate"),
        ("data.val_fraction=1.5", "data.val_fraction=1.5 is invalid: expected a fraction in \\[0, 1\\)"),
        ("data.val_fraction=-0.1", "data.val_fraction"),
        (
            "data.val_fraction=0",
            "no validation to choose epochs by train.select_metric=val/macro_f1: set train.select_metric=last",
        ),
        ("train.tta=vflip", "train.tta='vflip' is invalid: expected one of none\\|hflip"),
        ("train.ema=1", "train.ema=1.0 is invalid: expected a decay in \\[0, 1\\) \\(0: off\\)"),
        ("data.channels=2", "data.channels=2 is invalid: expected one of 1\\|3"),
        ("train.mixed_precision=fp8", "train.mixed_precision"),
        ("data.on_bad_image=ignore", "data.on_bad_image"),
        ("resume=yes", "resume"),
    ],
)
def test_bad_values_name_the_key(arg, expected):
    with pytest.raises(ConfigError, match=expected) as info:
        load_config([arg], RECIPES)
    assert "\n" not in str(info.value)


def test_unknown_recipe_suggests():
    with pytest.raises(ConfigError, match="did you mean 'resnet18_512'"):
        load_config(["recipe=resnet18_521"], RECIPES)


def test_recipe_by_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  name: cnn1\n")
    cfg = load_config([f"recipe={path}"], RECIPES)
    assert cfg.model.name == "cnn1" and cfg.recipe == "mine"


def test_unknown_key_in_recipe_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  nam: cnn1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'model.nam' in recipe .*bad.yaml; did you mean 'model.name'"):
        load_config([f"recipe={path}"], RECIPES)


def test_malformed_override():
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(["optim.lr"], RECIPES)


def test_in_chans_must_agree_with_channels():
    with pytest.raises(ConfigError, match="model.in_chans=1 disagrees with data.channels=3"):
        load_config(["model.in_chans=1"], RECIPES)
    assert load_config(["data.channels=1"], RECIPES).in_chans == 1


def test_list_values_parse():
    cfg = load_config(["augment.brightness=[0.7,1.3]"], RECIPES)
    assert list(cfg.augment.brightness) == [0.7, 1.3]
    with pytest.raises(ConfigError, match="augment.brightness"):
        load_config(["augment.brightness=[1.3,0.7]"], RECIPES)


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(["recipe=resnet18_512", "seed=7"], RECIPES)
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(cfg))
    assert config_from_yaml(path) == cfg


def test_nearest_key_none_for_nonsense():
    assert nearest_key("zzzzzz.qqqq", ["optim.lr", "data.root"]) is None


def test_config_validates_on_creation():
    with pytest.raises(ConfigError):
        Config(resume="sometimes")


def test_unknown_key_without_near_match_lists_the_section():
    with pytest.raises(
        ConfigError, match=r"unknown key 'slurm.x' in the command line; slurm has: cluster, partition, nodes"
    ):
        load_config(["slurm.x=1"], RECIPES)


def test_free_form_sbatch_options_are_accepted():
    cfg = load_config(["slurm.additional.reservation=mri", "slurm.additional.exclusive=true"], RECIPES)
    assert dict(cfg.slurm.additional) == {"reservation": "mri", "exclusive": True}


def test_string_keys_take_cli_values_verbatim(tmp_path):
    cfg = load_config(
        ["train.mixed_precision=no", "model.name=resnet18", "tracking.name=on", "output_dir=null"], RECIPES
    )
    assert cfg.train.mixed_precision == "no" and cfg.tracking.name == "on" and cfg.output_dir is None
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  mixed_precision: no\n")  # YAML 1.1: a bare no is false
    assert load_config([f"recipe={recipe}"], RECIPES).train.mixed_precision == "no"
    assert load_config(["data.root='/data/my set'"], RECIPES).data.root == "/data/my set"


def test_flat_dict():
    from brainmri.config import flat_dict

    assert flat_dict({"a": {"b": 1, "c": {}}, "d": 2, "e": {"f": {"g": 3}}}) == {
        "a.b": 1,
        "a.c": {},
        "d": 2,
        "e.f.g": 3,
    }


def test_a_refit_without_validation_selects_the_last_epoch():
    cfg = load_config(["data.val_fraction=0", "train.select_metric=last", "train.tta=hflip"], RECIPES)
    assert not cfg.has_validation and cfg.train.tta == "hflip"
    assert load_config(["data.val_fraction=0", "data.folds=5", "data.fold=1"], RECIPES).has_validation  # folds validate
    assert load_config([], RECIPES).has_validation


@pytest.mark.parametrize(
    "overrides",
    [
        ["data.val_fraction=0", "train.select_metric=last"],
        ["data.val_fraction=0", "data.folds=3", "data.fold=2"],
        ["data.val_fraction=0.2"],
        ["data.folds=5", "data.fold=0", "data.split_groups=none"],
    ],
)
def test_the_config_and_the_split_share_one_validation_rule(overrides):
    """The config refuses a validation metric exactly when the split would make no validation."""
    from brainmri.data.splits import split_rule

    cfg = load_config(overrides, RECIPES)
    assert cfg.has_validation == split_rule(cfg.data, cfg.seed).has_validation
    assert cfg.has_validation == (
        "data.val_fraction=0" not in overrides or any(o.startswith("data.folds") for o in overrides)
    )


@pytest.mark.parametrize(
    ("nodes", "expected"), [(2, (2, 2, False)), ("2", (2, 2, False)), ("1-2", (1, 2, True)), ("4-4", (4, 4, False))]
)
def test_slurm_nodes_is_a_count_or_a_range(nodes, expected):
    slurm = SlurmConfig(nodes=nodes)
    assert (slurm.min_nodes, slurm.max_nodes, slurm.elastic) == expected


@pytest.mark.parametrize("nodes", [0, "0-2", "2-1", "two", "1-", "1-2-3"])
def test_a_bad_node_range_is_one_line(nodes):
    with pytest.raises(ConfigError, match="slurm.nodes=.* is invalid: expected an integer >= 1 or a range MIN-MAX"):
        SlurmConfig(nodes=nodes)


def test_a_node_range_must_keep_the_global_batch_on_every_count():
    Config(slurm=SlurmConfig(nodes="1-2"))
    Config(slurm=SlurmConfig(nodes="2-3"), train=TrainConfig(grad_accum=2))  # 3x2 on 2 nodes: accumulation 3
    with pytest.raises(ConfigError, match=r"slurm.nodes=1-3 with train.grad_accum=1: on 2 node\(s\) no whole"):
        Config(slurm=SlurmConfig(nodes="1-3"))


def test_node_ranges_arrive_from_the_command_line(tmp_path):
    cfg = load_config(["recipe=demo", "slurm.nodes=1-2"], RECIPES)
    assert cfg.slurm.nodes == "1-2" and cfg.slurm.elastic
    assert load_config(["recipe=demo", "slurm.nodes=2"], RECIPES).slurm.nodes == 2
