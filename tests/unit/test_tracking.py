from pathlib import Path

import pytest

from brainmri.config import TrackingConfig
from brainmri.errors import ConfigError
from brainmri.tracking import resolve_mode, wandb_credentials_present


def test_auto_is_online_with_an_api_key(tmp_path):
    assert resolve_mode("auto", {"WANDB_API_KEY": "x" * 40}, home=tmp_path) == "online"


def test_auto_is_offline_without_credentials(tmp_path):
    assert resolve_mode("auto", {}, home=tmp_path) == "offline"


def test_auto_reads_netrc_for_the_configured_host(tmp_path):
    (tmp_path / ".netrc").write_text("machine wandb.example.org\n  login user\n  password secret\n")
    assert not wandb_credentials_present({}, home=tmp_path)
    assert wandb_credentials_present({"WANDB_BASE_URL": "https://wandb.example.org"}, home=tmp_path)


def test_broken_netrc_counts_as_no_credentials(tmp_path):
    (tmp_path / ".netrc").write_text("machine\n")
    assert resolve_mode("auto", {}, home=tmp_path) == "offline"


@pytest.mark.parametrize("mode", ["online", "offline", "disabled"])
def test_explicit_modes_are_kept(mode, tmp_path):
    assert resolve_mode(mode, {"WANDB_API_KEY": "k"}, home=tmp_path) == mode


def test_tracking_config_validation():
    with pytest.raises(ConfigError, match="tracking.wandb"):
        TrackingConfig(wandb="cloud")
    with pytest.raises(ConfigError, match="tracking.log_every"):
        TrackingConfig(log_every=0)
