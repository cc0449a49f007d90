"""Model cards and the architecture registry: one card names a model everywhere."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import srlib
from srlib.cli import main
from srlib.models import Swin2SR, architectures, spec_identity, write_model_card
from srlib.models.card import shipped_cards
from srlib.ops.slurm import load_profile, render_dr

from .conftest import synthetic_scene

ARCH = dict(img_size=16, window_size=8, embed_dim=12, depths=(1,), num_heads=(2,),
            mlp_ratio=2.0, upsampler="pixelshuffledirect", resi_connection="1conv")


def _checkpoint(tmp_path, **arch):
    net = Swin2SR(in_chans=10, out_chans=4, upscale=10, **{**ARCH, **arch})
    path = tmp_path / "weights.pth"
    torch.save({"params_ema": net.state_dict()}, path)
    return path


def test_registry_lists_architectures_and_refuses_misspelt_options():
    assert {"bicubic", "swin2sr", "torchscript"} <= set(architectures())
    with pytest.raises(srlib.ModelError, match=r"no option \['windowsize'\].*window_size"):
        srlib.load_model("swin2sr", random_weights=True, windowsize=4)
    with pytest.raises(srlib.ModelError, match="upsampeler"):
        srlib.load_model("swin2sr", random_weights=True, upsampeler="nearest+conv")
    with pytest.raises(srlib.ModelError, match="no option"):
        srlib.load_model("bicubic", embed_dim=4)
    with pytest.raises(TypeError):  # the network itself no longer swallows options
        Swin2SR(windowsize=4)
    for model in ("bicubic", torch.nn.Identity()):  # a checkpoint is never ignored
        with pytest.raises(srlib.ModelError, match="would be ignored"):
            srlib.load_model(model, checkpoint="weights.pth")


def test_a_nearest_conv_checkpoint_is_refused_at_another_scale_than_4(tmp_path):
    path = _checkpoint(tmp_path, upsampler="nearest+conv")
    with pytest.raises(srlib.ModelError, match="cannot show its scale"):
        srlib.load_model("swin2sr", checkpoint=path, **{**ARCH, "upsampler": "nearest+conv"})


def test_a_card_round_trips_and_its_checkpoint_is_verified(tmp_path):
    path = _checkpoint(tmp_path)
    spec = srlib.load_model("swin2sr", checkpoint=path, **ARCH)
    card = write_model_card(spec, tmp_path / "card.json", version="7")
    body = json.loads(card.read_text())
    assert body["checkpoint"] == "weights.pth" and body["version"] == "7"
    assert body["config"]["embed_dim"] == 12 and len(body["sha256"]) == 64
    loaded = srlib.load_model(str(card))
    assert (loaded.version, loaded.checkpoint_sha256) == ("7", body["sha256"])
    scene = synthetic_scene((24, 24), with_scl=False)
    a = srlib.super_resolve(scene, spec).red.values
    b = srlib.super_resolve(scene, loaded).red.values
    assert (a == b).all()  # the card names exactly that model
    assert spec_identity(loaded) != spec_identity(spec)  # the version is part of it
    # other weights under the card's name are refused before loading
    torch.save({"params_ema": Swin2SR(in_chans=10, out_chans=4, upscale=10, **ARCH)
                .state_dict()}, path)
    with pytest.raises(srlib.ModelError, match="not the ones the card names"):
        srlib.load_model(card)
    for broken, message in (({"name": "x"}, "missing fields"),
                            ({**body, "colour": 1}, "unknown fields"),
                            ({**body, "config": {"embed": 3}}, "no option")):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(broken))
        with pytest.raises(srlib.ModelError, match=message):
            srlib.load_model(bad)


def test_the_shipped_card_runs_from_every_entry_point(tmp_path):
    card = shipped_cards()["s2-swin2sr-demo"]
    spec = srlib.load_model("s2-swin2sr-demo")
    assert spec.name == "s2-swin2sr-demo" and spec.version == "1"
    assert (card.parent / "weights.pth").stat().st_size < 1 << 20
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path),
                                       "--model", "s2-swin2sr-demo"])
    assert result.exit_code == 0, result.output
    assert "QC PASSED" in result.output
    qc = json.loads((tmp_path / "S2x10_29RKH.qc.json").read_text())
    assert qc["model"]["name"] == "s2-swin2sr-demo"
    assert qc["model"]["checkpoint_sha256"] == json.loads(card.read_text())["sha256"]
    # trained on a 100 m desert scene, it does not carry to 10 m Central Europe: QC's
    # consistency check refuses that product instead of delivering it
    other = CliRunner().invoke(main, ["demo", "--sample", "bigearthnet", "--out",
                                      str(tmp_path), "--model", "s2-swin2sr-demo"])
    assert other.exit_code == 1 and "consistency" in other.output
    assert not (tmp_path / "S2x10_bigearthnet.tif").exists()
    # a SLURM job gets the card, and the card's rate sets its time limit
    profile = load_profile("poznan")
    script = render_dr(profile, date="20200219", mgrs="29RKH", out="/o", log_dir="/l", venv="/v",
                       model=str(card))
    assert f"--model {card.resolve()}" in script
    with pytest.raises(srlib.InputError, match="model card"):
        render_dr(profile, date="20200219", mgrs="29RKH", out="/o", log_dir="/l", venv="/v",
                  model="swin2sr")
    fast = tmp_path / "fast.json"
    fast.write_text(json.dumps({**json.loads(card.read_text()), "rate_mpx_per_s": 1000.0,
                                "checkpoint": str(card.parent / "weights.pth")}))
    quick = render_dr(profile, date="20200219", mgrs="29RKH", out="/o", log_dir="/l", venv="/v",
                      model=str(fast))
    limit = [ln for ln in quick.splitlines() if ln.startswith("#SBATCH --time")]
    slow = [ln for ln in script.splitlines() if ln.startswith("#SBATCH --time")]
    assert limit != slow  # the card's measured rate changed the request
