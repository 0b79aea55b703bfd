"""Flash: models shaped like bench/firmware_size.py's cnn_4layer configurations meet the flash target
the bench holds them to, and each project compiles only the convolution code paths its layers run
(kernels/vs_config.h, firmware/features.py)."""
import shutil
import subprocess
from pathlib import Path

import pytest

from firmware_zoo import keras_cnn, keras_cnn_4layer, keras_mlp
from verisparse.firmware import toolchain
from verisparse.firmware.features import conv_features
from verisparse.firmware.generate import flash_bytes, flash_target_bytes, generate_firmware
from verisparse.firmware.lower import lower
from verisparse.tflite_graph import read_tflite

needs_arm = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="`make toolchain` installs it")

# (channel widths, zero fraction): the bench's structured 0.9 and 0.95 models (widths as structured
# pruning left them; 18.5% and 22% of their int8 weights are zero, stored dense), the smallest dense
# models, where the kernels are most of the flash; and a 99% sparse full-width model, stored sparse
BENCH_LIKE = {"structured 0.9": ((6, 10, 31), 0.185), "structured 0.95": ((4, 7, 22), 0.22),
              "unstructured 0.99": ((16, 32, 100), 0.99)}


def _size_elf(src, tmp_path, name):
    fw = tmp_path / name
    r = generate_firmware(src, "mps2-an386", fw, vectors=1)
    toolchain.make(fw, "size.elf")
    return r, fw


@needs_arm
@pytest.mark.parametrize("name", BENCH_LIKE)
def test_bench_shaped_cnn_4layer_meets_the_flash_target(name, tmp_path):
    """The flash of size.elf (Cortex-M4, DSP kernels) is within 1.15 x (non-zero weights + biases +
    sparse indices) + 4 KB, the bench's target: the DSP convolution code once put the structured
    0.9 model 214 B over it."""
    widths, zeros = BENCH_LIKE[name]
    src = tmp_path / "model.tflite"
    src.write_bytes(keras_cnn_4layer(widths, zeros))
    r, fw = _size_elf(src, tmp_path, "fw")
    storage = {l["storage"] for l in r["layers"] if "storage" in l}
    assert storage == ({"sparse"} if zeros > 0.9 else {"dense"}), storage
    flash, target = flash_bytes(toolchain.section_sizes(fw / "size.elf")), flash_target_bytes(r["totals"])
    assert flash <= target, (name, flash, target)


def test_conv_features_follow_the_layers():
    """Each flag is on exactly where some layer runs its path: dilation, patches copied (a scratch
    buffer), two or more output pixels of a dense layer, a multiplier of 1/2 or more."""
    from firmware_zoo import keras_dsp_edges
    mlp = lower(read_tflite(keras_mlp()))
    assert conv_features(mlp) == dict(VS_CONV_PAIRS=False, VS_CONV_GATHER=False, VS_CONV_DILATION=False,
                                      VS_CONV_LEFT_SHIFT=False)
    cnn = lower(read_tflite(keras_cnn()))  # sparse convolutions only, one of dilation 2
    assert conv_features(cnn) == dict(VS_CONV_PAIRS=False, VS_CONV_GATHER=True, VS_CONV_DILATION=True,
                                      VS_CONV_LEFT_SHIFT=False)
    edges = lower(read_tflite(keras_dsp_edges()))  # dense multi-pixel convolutions, a strided 1x1 one
    assert conv_features(edges) == dict(VS_CONV_PAIRS=True, VS_CONV_GATHER=True, VS_CONV_DILATION=False,
                                        VS_CONV_LEFT_SHIFT=False)
    for l in edges.layers:  # without its scratch buffer the strided 1x1 layer would read in place
        l.scratch_bytes = 0 if l.kernel.startswith("vs_conv2d") else l.scratch_bytes
    assert not conv_features(edges)["VS_CONV_GATHER"]
    conv = next(l for l in mlp.layers if l.kernel.startswith("vs_conv2d"))
    conv.arrays["shift"] = conv.arrays["shift"].copy()
    conv.arrays["shift"][-1] = 0  # M in [1/2, 1)
    assert conv_features(mlp)["VS_CONV_LEFT_SHIFT"]
    conv.arrays["shift"][-1] = -1
    assert not conv_features(mlp)["VS_CONV_LEFT_SHIFT"]


@needs_arm
def test_a_model_of_fully_connected_layers_links_no_pixel_pairs_or_patches(tmp_path):
    """Dense fully connected layers (one pixel each) leave out the two-pixel loop and the patch
    gathering, which a model of multi-pixel convolutions keeps; the kernels as shipped keep every
    path."""
    from firmware_zoo import keras_dsp_edges, keras_softmax

    def functions(fw):
        out = subprocess.run(["arm-none-eabi-nm", str(fw / "size.elf")], capture_output=True, text=True,
                             check=True).stdout
        return {line.split()[-1].split(".")[0] for line in out.splitlines()}  # less gcc's .constprop.0

    for name, build, convolutions in (("fc", keras_softmax, False), ("conv", keras_dsp_edges, True)):
        src = tmp_path / f"{name}.tflite"
        src.write_bytes(build())
        _, fw = _size_elf(src, tmp_path, name)
        config = (fw / "kernels/vs_config.h").read_text()
        assert f"#define VS_CONV_PAIRS {int(convolutions)}" in config, config
        assert f"#define VS_CONV_GATHER {int(convolutions)}" in config, config
        linked = functions(fw)
        assert "vs_conv2d" in linked and "one_pixel" in linked
        assert ("two_pixels" in linked) == convolutions and ("vs_move" in linked) == convolutions
    shipped = (Path(__file__).resolve().parents[1] / "firmware/kernels/vs_config.h").read_text()
    assert all(f"#define {flag} 1" in shipped for flag in conv_features(lower(read_tflite(keras_mlp()))))
