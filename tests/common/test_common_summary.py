"""The summary block: printed by every trainer, parsed back by the agent, the tests and docker."""

import pytest

from common.errors import ContractError
from common.summary import FIELDS, format_summary, parse_summary, print_summary

VALUES = dict(val_bpb=0.997900, training_seconds=300.1, total_seconds=325.9, peak_vram_mb=45060.2,
              mfu_percent=39.80, total_tokens_M=499.6, num_steps=953, num_params_M=50.3, depth=8,
              backend="cuda", profile="h100", tokens_per_sec=1664000)


def test_format_then_parse_round_trips():
    parsed = parse_summary(format_summary(**VALUES))
    assert parsed == pytest.approx(VALUES)
    assert type(parsed["num_steps"]) is int and type(parsed["depth"]) is int
    assert type(parsed["backend"]) is str and type(parsed["val_bpb"]) is float


def test_block_has_upstreams_lines_in_order():
    lines = format_summary(**VALUES).splitlines()
    assert lines[0] == "---"
    assert [line.split(":")[0] for line in lines[1:]] == list(FIELDS)
    assert lines[1:10] == [
        "val_bpb:            0.997900", "training_seconds:   300.1", "total_seconds:      325.9",
        "peak_vram_mb:       45060.2", "mfu_percent:        39.80", "total_tokens_M:     499.6",
        "num_steps:          953", "num_params_M:       50.3", "depth:              8"]


def test_print_summary_prints_the_block(capsys):
    print_summary(**VALUES)
    assert parse_summary(capsys.readouterr().out) == pytest.approx(VALUES)


def test_parse_reads_a_block_inside_a_log():
    log = "step 00001 | loss 9.01\n---\nnot a summary\nstep 00002 | loss 8.90\n" + format_summary(**VALUES) + "\n"
    assert parse_summary(log)["num_steps"] == 953


def test_parse_picks_the_last_block():
    first = format_summary(**{**VALUES, "val_bpb": 1.5, "num_steps": 10})
    last = format_summary(**{**VALUES, "val_bpb": 0.9})
    parsed = parse_summary(f"warm-up\n{first}\nmore training\n{last}\n")
    assert parsed["val_bpb"] == 0.9 and parsed["num_steps"] == 953


def test_a_truncated_block_is_a_contract_error():
    text = "\n".join(format_summary(**VALUES).splitlines()[:4])      # killed after total_seconds
    with pytest.raises(ContractError, match="peak_vram_mb"):
        parse_summary("training...\n" + text)


def test_a_truncated_last_block_does_not_fall_back_to_an_earlier_one():
    earlier = format_summary(**VALUES)
    cut = "\n".join(format_summary(**{**VALUES, "val_bpb": 0.5}).splitlines()[:3])
    with pytest.raises(ContractError):
        parse_summary(f"{earlier}\nrun 2\n{cut}")


@pytest.mark.parametrize("text", ["", "step 1 | loss 9.0\nTraceback (most recent call last):\n  ...\nOOM\n",
                                  "val_bpb: 0.99\n"])
def test_no_block_is_a_contract_error(text):
    with pytest.raises(ContractError, match="summary"):
        parse_summary(text)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_val_bpb_is_a_contract_error(bad):
    with pytest.raises(ContractError, match="val_bpb"):
        parse_summary(format_summary(**{**VALUES, "val_bpb": bad}))


def test_a_field_of_the_wrong_type_is_a_contract_error():
    text = format_summary(**VALUES).replace("num_steps:          953", "num_steps:          many")
    with pytest.raises(ContractError, match="num_steps"):
        parse_summary(text)


def test_format_requires_every_field():
    with pytest.raises(ValueError, match="tokens_per_sec"):
        format_summary(**{k: v for k, v in VALUES.items() if k != "tokens_per_sec"})
