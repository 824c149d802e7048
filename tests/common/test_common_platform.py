"""Profiles: h100 is upstream's; picked by name, by environment or from the hardware; MFU uses the real card."""

import os
import stat

import pytest

from common.errors import ContractError
from common.platform import PROFILES, auto_backend, detect, get_profile, nvidia_gpu_name, peak_flops


def test_h100_profile_equals_upstream():
    p = PROFILES["h100"]
    assert (p.time_budget, p.max_seq_len, p.eval_tokens, p.peak_flops) == (300, 2048, 40 * 524288, 989.5e12)
    assert p.vocab_size == 8192


def test_the_expected_profiles_exist_and_all_use_vocab_8192():
    assert {"h100", "gpu", "apple", "cpu", "smoke"} <= set(PROFILES)
    assert all(p.vocab_size == 8192 and p.name == name for name, p in PROFILES.items())
    assert PROFILES["smoke"].time_budget <= 10


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profile_sizes_divide_evenly(name):
    p = PROFILES[name]
    assert p.eval_tokens % p.max_seq_len == 0                                   # whole eval rows
    assert p.total_batch_size % (p.device_batch_size * p.max_seq_len) == 0      # whole accumulation steps


def test_get_profile_by_name():
    assert get_profile("smoke") is PROFILES["smoke"]
    assert get_profile("h100") is PROFILES["h100"]


def test_get_profile_from_environment(monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_PROFILE", "apple")
    assert get_profile() is PROFILES["apple"]
    assert get_profile("cpu") is PROFILES["cpu"]          # an explicit name wins


def test_unknown_profile_is_a_contract_error_naming_the_profiles(monkeypatch):
    with pytest.raises(ContractError) as e:
        get_profile("h1000")
    assert "h1000" in str(e.value)
    assert all(name in str(e.value) for name in PROFILES)
    monkeypatch.setenv("AUTORESEARCH_PROFILE", "nope")
    with pytest.raises(ContractError, match="nope"):
        get_profile()


@pytest.mark.parametrize("device, flops", [
    ("NVIDIA H100 80GB HBM3", 989.5e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989.5e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA L40S", 362e12),
    ("NVIDIA L4", 121e12),
    ("NVIDIA GeForce RTX 4090", 165.2e12),
])
def test_peak_flops_is_the_real_cards(device, flops):
    assert peak_flops(device, PROFILES["h100"]) == flops


@pytest.mark.parametrize("device", ["Tesla T4", "Apple M3 Max", "", None])
def test_peak_flops_of_an_unknown_device_is_the_profiles(device):
    assert peak_flops(device, PROFILES["apple"]) == PROFILES["apple"].peak_flops


# detect() reads the real `nvidia-smi`; here a small script of that name on PATH plays the card.

def fake_nvidia_smi(folder, output, status=0):
    folder.mkdir(exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' '{output}'\nexit {status}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return folder


@pytest.mark.parametrize("gpu, profile", [
    ("NVIDIA H100 80GB HBM3", "h100"),
    ("NVIDIA H200", "h100"),
    ("NVIDIA GeForce RTX 4090", "gpu"),
])
def test_detect_picks_the_profile_from_the_gpu(tmp_path, monkeypatch, gpu, profile):
    monkeypatch.setenv("PATH", str(fake_nvidia_smi(tmp_path / "bin", gpu)))
    assert nvidia_gpu_name() == gpu
    assert detect() == profile
    assert get_profile() is PROFILES[profile]
    assert auto_backend() == "cuda"


@pytest.mark.skipif(os.uname().sysname == "Darwin", reason="Apple silicon detects as apple")
def test_detect_without_a_gpu_is_cpu(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert nvidia_gpu_name() is None and detect() == "cpu"


def test_a_failing_nvidia_smi_means_no_gpu(tmp_path, monkeypatch):
    bin_dir = fake_nvidia_smi(tmp_path / "bin", "NVIDIA-SMI has failed because it couldn't communicate", 9)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert nvidia_gpu_name() is None


def test_a_budget_derives_a_profile_that_names_it(monkeypatch):
    p = get_profile("h100", 60)
    assert (p.name, p.time_budget) == ("h100@60s", 60)
    assert {k: v for k, v in p.as_dict().items() if k not in ("name", "time_budget")} == \
           {k: v for k, v in PROFILES["h100"].as_dict().items() if k not in ("name", "time_budget")}
    assert get_profile("h100@60s") == p                       # the name alone carries the budget to a child
    assert get_profile("smoke", "1.5m").name == "smoke@90s"
    assert get_profile("h100", 300) is PROFILES["h100"]       # the profile's own budget is the profile
    monkeypatch.setenv("AUTORESEARCH_BUDGET", "20")
    assert get_profile("cpu").name == "cpu@20s"


@pytest.mark.parametrize("budget", ["0", "-5", "soon", "60x"])
def test_a_bad_budget_is_a_contract_error_naming_the_fix(budget):
    with pytest.raises(ContractError, match="BUDGET=60"):
        get_profile("h100", budget)


def test_untimed_steps_are_upstreams_eleven_except_for_tests():
    """Upstream's train.py times its budget from step 11: steps 0-10 (compilation) are free. Every profile
    but smoke (whose 3-s budget would drown in them) gives the same."""
    assert all(p.untimed_steps == 11 for name, p in PROFILES.items() if name != "smoke")
    assert PROFILES["smoke"].untimed_steps == 2
