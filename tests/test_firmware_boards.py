"""The Cortex-M0 target: QEMU's microbit (nRF51822, 256 KB flash, 16 KB RAM), plain-C kernels,
semihosting like the mps2 boards; models that do not fit its RAM are refused with the numbers."""
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from conftest import trained_digits_export
from verisparse.cli import main
from verisparse.errors import VeriSparseError
from verisparse.firmware import toolchain
from verisparse.firmware.boards import get_board
from verisparse.firmware.generate import generate_firmware

needs_arm = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
                               reason="`make test` installs the toolchain (make toolchain)")


def test_microbit_board_is_a_cortex_m0_with_16_kb_of_ram():
    b = get_board("microbit")
    assert (b.cpu, b.qemu_machine, b.flash_bytes, b.ram_bytes) == ("cortex-m0", "microbit", 256 * 1024, 16 * 1024)
    assert b.stack_bytes < b.ram_bytes // 4  # the 8 KB of the big boards would leave the model half the RAM


@needs_arm
@pytest.mark.slow
def test_default_recipe_runs_byte_exact_on_cortex_m0_in_qemu(tmp_path):
    """The default recipe's model (cnn_4layer, 90% sparse; trained briefly on digits to keep the test
    fast) on the micro:bit: 200 vectors, every byte equal to TFLM's, the code ARMv6-M only."""
    run = trained_digits_export(tmp_path / "run", "cnn_4layer", 0.02, 2)
    r = generate_firmware(run, "microbit", tmp_path / "fw", run=True, vectors=200)
    e = r["exactness"]
    assert e["exact"] and e["tflm"]["identical_vectors"] == 200, e
    assert r["ram"]["within_target"] and r["ram"]["data_bss_bytes"] <= r["arena"]["bytes"] + 2048, r["ram"]
    assert r["flash"]["bytes"] < 256 * 1024
    attrs = subprocess.run(["arm-none-eabi-readelf", "-A", str(tmp_path / "fw/fw.elf")], capture_output=True,
                           text=True).stdout
    assert "Tag_CPU_arch: v6S-M" in attrs or "Tag_CPU_arch: v6-M" in attrs, attrs
    assert "VS-OUT 199 " in toolchain.run_qemu(tmp_path / "fw")
    assert r["instructions"]["per_inference"] > r["totals"]["effective_macs"]


def test_a_model_too_big_for_the_microbit_is_one_clear_error(tmp_path):
    import tensorflow as tf
    from firmware_zoo import _convert

    model = tf.keras.Sequential([tf.keras.layers.Input((40, 40, 3), batch_size=1),
                                 tf.keras.layers.Conv2D(8, 3, padding="same"), tf.keras.layers.Conv2D(4, 3)])
    path = tmp_path / "wide.tflite"
    path.write_bytes(_convert(model, (40, 40, 3)))
    with pytest.raises(VeriSparseError, match=r"too big for microbit: it needs \d+ bytes of activation arena"):
        generate_firmware(path, "microbit", tmp_path / "fw", vectors=1)
    r = CliRunner().invoke(main, ["firmware", str(path), "--board", "microbit", "--out", str(tmp_path / "fw"),
                                  "--vectors", "1"])
    assert r.exit_code == 2 and "more than microbit's 16384 bytes of RAM" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "fw").exists()  # refused before anything is written
    # the same model generates for a board with more RAM, and its arena is what the microbit lacks
    arena = generate_firmware(path, "mps2-an386", tmp_path / "fw4", vectors=1)["arena"]["bytes"]
    assert arena + get_board("microbit").stack_bytes > 16 * 1024
