"""Image quality along the paths: SSIM, PSNR and LPIPS in eval_curve.py (torchmetrics), and plot.py's animated GIFs."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import ae
import data
import eval_curve
import plot
import report
from lib import training, vgg
from lib.files import UserError, load_ae, load_curve

EVAL = ["--num_points", "5", "--columns", "3", "--bn-images", "40", "--train-images", "40", "--test-images", "12"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def curve(one_epoch_curve):
    return one_epoch_curve


@pytest.fixture(scope="module")
def evaluated(curve):
    """The default evaluation (offline: no LPIPS) with the quality measured on the first 8 of 12 test images."""
    return eval_curve.main(["--ckpt", str(curve), *EVAL, "--quality-images", "8", "--lpips", "auto",
                            "--out", str(curve.with_name("quality.eval.json"))])


def faces(n=6):
    return data.synthetic_faces(0, n).float().div(255)


def test_ssim_of_an_image_with_itself_is_one_and_falls_with_noise():
    x, g = faces(), torch.Generator().manual_seed(0)
    quality = training.Quality()
    assert torch.allclose(quality.values(x, x)["ssim"], torch.ones(len(x)), atol=1e-6)
    previous = torch.ones(len(x))
    for std in (0.02, 0.05, 0.1, 0.2):
        noisy = (x + std * torch.randn(x.shape, generator=g)).clamp(0, 1)
        values = quality.values(noisy, x)
        assert (values["ssim"] < previous).all(), std  # every image, at every step up in noise
        previous = values["ssim"]
        mse = ((noisy - x) ** 2).mean(dim=(1, 2, 3))
        assert torch.allclose(values["psnr"], -10 * torch.log10(mse), rtol=1e-4)  # PSNR of each image, data range 1


def endpoint_quality(path, curve_ckpt, images, bn_images):
    """An endpoint's own per-image SSIM and PSNR, its BatchNorm statistics recomputed as the evaluation does."""
    model = load_ae(path)[0]
    training.recompute_bn(model, bn_images, 0.0, batch_size=64, device=CPU)
    return training.per_image_losses(model, images, ae.mse, batch_size=64, device=CPU, quality=training.Quality())


def test_ssim_at_the_ends_is_the_endpoints_own(evaluated, curve, endpoints):
    config = load_curve(curve)[1]["config"]
    train, test = data.load_split(config["data"], "train"), data.load_split(config["data"], "test")
    assert evaluated["settings"]["quality_images"] == 8
    for index, end in ((0, 0), (-1, 1)):
        # an end is an anchor: measured on every test image (the whole split's mean), the same on both paths
        own = endpoint_quality(endpoints[end], curve, test, train[:40])
        for path in ("curve", "segment"):
            values = evaluated["paths"][path]
            assert values["estimator"][index] == "anchor"
            assert values["test_ssim"][index] == pytest.approx(float(own["ssim"].double().mean()), abs=1e-6), (path, end)
            assert values["test_psnr"][index] == pytest.approx(float(own["psnr"].double().mean()), abs=1e-4), (path, end)
    for path in ("curve", "segment"):
        s = evaluated["paths"][path]["summary"]["test_ssim"]
        assert s["start"] == evaluated["paths"][path]["test_ssim"][0] and 0 < s["min"] <= s["max"] <= 1


def test_without_weights_there_is_no_lpips_and_the_reason_is_recorded(evaluated, monkeypatch, tmp_path):
    assert evaluated["lpips"]["metric"] is None and "torch's cache" in evaluated["lpips"]["reason"]
    assert not any("lpips" in key for path in evaluated["paths"].values() for key in path)
    # the report says why too
    text = report.quality_section([{**evaluated, "_path": str(tmp_path / "x.eval.json")}])
    assert "LPIPS" in text and "torch's cache" in text
    # asked for by name, ImageNet weights that cannot be had are an error, not a silent omission
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(UserError, match="could not get ImageNet VGG16 weights"):
        vgg.lpips_metric("imagenet", None, CPU)


def test_a_random_backbone_is_labelled_uncalibrated_and_the_subset_estimator_uses_the_first_images(curve, endpoints, tmp_path):
    result = eval_curve.main(["--ckpt", str(curve), *EVAL, "--lpips", "random", "--quality-images", "5", "--estimator", "subset",
                              "--out", str(tmp_path / "r.eval.json")])
    config = load_curve(curve)[1]["config"]
    train, test = data.load_split(config["data"], "train"), data.load_split(config["data"], "test")
    own = endpoint_quality(endpoints[0], curve, test[:5], train[:40])  # the plain mean of the first 5 test images
    assert result["paths"]["segment"]["test_ssim"][0] == pytest.approx(float(own["ssim"].double().mean()), abs=1e-6)
    assert result["lpips"]["metric"] == "lpips_uncalibrated" and result["lpips"]["calibrated"] is False
    for values in result["paths"].values():
        assert "test_lpips" not in values and len(values["test_lpips_uncalibrated"]) == 5
        assert all(v > 0 for v in values["test_lpips_uncalibrated"])
    text = report.quality_section([{**result, "_path": str(tmp_path / "r.eval.json")}])
    assert "uncalibrated" in text


def test_lpips_reads_its_backbone_from_a_file_into_torchmetrics_network(tmp_path):
    x = faces(4)
    y = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    seeded, info = vgg.lpips_metric("random", None, CPU)  # the trunk of vgg16_features("random"): seed 0
    torch.save(ae.vgg16_trunk(0).state_dict(), tmp_path / "vgg.pth")
    from_file, file_info = vgg.lpips_metric(str(tmp_path / "vgg.pth"), None, CPU)
    other, _ = vgg.lpips_metric("random", None, CPU)
    assert file_info["metric"] == "lpips" and file_info["backbone"] == "file:vgg.pth" and file_info["calibrated"]
    assert torch.equal(from_file(y, x), seeded(y, x))  # the file's weights reached every slice of the network
    assert torch.equal(seeded(x, x), torch.zeros(4)) and (seeded(y, x) > 0).all()
    torch.save(ae.vgg16_trunk(1).state_dict(), tmp_path / "vgg1.pth")
    assert not torch.allclose(vgg.lpips_metric(str(tmp_path / "vgg1.pth"), None, CPU)[0](y, x), other(y, x))


def test_the_gif_has_a_frame_per_t_and_starts_at_the_t0_reconstructions(evaluated, curve, tmp_path):
    eval_json = curve.with_name("quality.eval.json")
    written = plot.main([str(eval_json), "--out", str(tmp_path / "all")])
    gif = tmp_path / "all" / "recon_quality.gif"
    assert gif in written and json.loads((tmp_path / "all" / "index.json").read_text())["figures"].count(str(gif)) == 1
    with np.load(eval_json.with_name(evaluated["files"]["npz"])) as f:
        npz = {k: f[k] for k in f.files}
    assert list(npz["t"]) == evaluated["t"] and list(npz["columns"]) == [0, 2, 4]
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 5 and gif.stat().st_size < 2_000_000
        first = np.asarray(im.convert("RGB"), dtype=float)
    # the curve's panel, the second of three columns: its four images stacked
    panel = first[28:28 + 4 * 64, 6 + 106:6 + 106 + 64]
    at = lambda i: np.concatenate(list(npz["curve"][i].transpose(0, 2, 3, 1))).astype(float)  # noqa: E731
    error = {i: np.abs(panel - at(i)).mean() for i in range(5)}
    assert error[0] < 8.0  # 128 colours: within the palette's rounding (about 3 to 7 of 255 per channel)
    assert error[0] < min(error[i] for i in range(1, 5))  # the t = 0 reconstructions, not another t's
    thinned = plot.main([str(eval_json), "--out", str(tmp_path / "thin"), "--gif-frames", "3"])
    with Image.open(next(p for p in thinned if p.suffix == ".gif")) as im:
        assert im.n_frames == 3


def test_figure_2_has_an_ssim_panel(evaluated, curve):
    fig = plot.draw_losses([{**evaluated, "_path": str(curve.with_name("quality.eval.json"))}], "title")
    assert [ax.get_ylabel() for ax in fig.axes] == ["train MSE", "test MSE", "test SSIM"]
    line = fig.axes[2].get_lines()[0]
    assert list(line.get_ydata()) == evaluated["paths"]["curve"]["test_ssim"]


def test_the_report_says_whether_the_curve_keeps_the_endpoints_ssim():
    def pair(curve, segment, se=0.001):
        paths = {name: {"test_ssim": v, "test_ssim_se": [se] * 3} for name, v in (("curve", curve), ("segment", segment))}
        return {"t": [0.0, 0.5, 1.0], "paths": paths}

    kept = report.ssim_numbers(pair([0.80, 0.78, 0.82], [0.80, 0.40, 0.82]))
    assert kept["curve"]["keeps"] and kept["curve"]["drop"] == pytest.approx(1 - 0.78 / 0.80) and kept["curve"]["t"] == 0.5
    assert not kept["segment"]["keeps"] and kept["segment"]["drop"] == pytest.approx(0.5)
    lost = report.ssim_numbers(pair([0.80, 0.70, 0.82], [0.80, 0.40, 0.82]))["curve"]
    assert not lost["keeps"] and lost["low"] == 0.70  # 12.5% below the lower end, 100 SE
    noisy = report.ssim_numbers(pair([0.80, 0.70, 0.82], [0.80, 0.40, 0.82], se=0.06))["curve"]
    assert noisy["keeps"]  # 0.10 below the lower end is within 2 SE of 0.06: not a measured drop
