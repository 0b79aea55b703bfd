"""`--layout cmake|zephyr|arduino|platformio`: the same model.c and kernels as a library for each
build system, built with the Arm compiler the way that build system would (no vendor SDK), with
metadata that parses and names every source."""
import configparser
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from verisparse.cli import main
from verisparse.errors import VeriSparseError
from verisparse.firmware.generate import generate_firmware

needs_gcc = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None,
                               reason="`make test` installs the toolchain (make toolchain)")
# the library sources: what the make layout compiles into the model (its harness and board files aside)
LIBRARY = {"model.c", "model.h"}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A small int8 CNN with a residual ADD (so in-place layers and conv scratch appear)."""
    from firmware_zoo import keras_residual
    path = tmp_path_factory.mktemp("layouts") / "residual.tflite"
    path.write_bytes(keras_residual())
    return path


def _library_sources(make_dir: Path) -> set[str]:
    """Base names of the model and kernel sources of a make project."""
    kernels = {p.name for p in (make_dir / "kernels").iterdir()}
    return LIBRARY | kernels


@pytest.fixture(scope="module")
def make_project(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("make") / "fw"
    generate_firmware(model, "mps2-an386", out, vectors=2)
    return out


def _compile(sources, include_dirs, flags, out: Path, compiler="arm-none-eabi-gcc"):
    out.mkdir(parents=True, exist_ok=True)
    for src in sources:
        cmd = [compiler, *flags, *(f"-I{d}" for d in include_dirs), "-c", str(src), "-o", str(out / (src.name + ".o"))]
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, (cmd, r.stderr)
    return sorted(out.glob("*.o"))


def _same_sources_as_make(files: dict[str, bytes], make_dir: Path):
    """Every library source has the make project's bytes (one source for all layouts)."""
    for name, data in files.items():
        assert data == next(make_dir.rglob(name)).read_bytes(), name


def _check_c_linkage(tmp: Path, include: Path, flags):
    """model.h from C++ (an Arduino sketch is C++): the calls name the C symbols, unmangled."""
    sketch = tmp / "sketch.cpp"
    sketch.write_text('#include "model.h"\nint8_t run_once(int8_t x)\n{\n    vs_model_input()[0] = x;\n'
                      "    vs_model_invoke();\n    return vs_model_output()[0];\n}\n")
    obj = _compile([sketch], [include], [f for f in flags if not f.startswith("-std=")] + ["-std=gnu++17"],
                   tmp / "cpp", compiler="arm-none-eabi-g++")[0]
    undefined = subprocess.run(["arm-none-eabi-nm", "-u", str(obj)], capture_output=True, text=True).stdout.split()
    assert {"vs_model_input", "vs_model_invoke", "vs_model_output"} <= set(undefined), undefined


@needs_gcc
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed (apt-get install cmake)")
def test_cmake_layout_builds_with_its_toolchain_file_and_links_into_an_application(model, make_project, tmp_path):
    lib = tmp_path / "lib"
    generate_firmware(model, "mps2-an385", lib, layout="cmake")
    text = (lib / "CMakeLists.txt").read_text()
    c_sources = sorted(n for n in _library_sources(make_project) if n.endswith(".c"))
    assert all(("kernels/" + n if n != "model.c" else n) in text for n in c_sources)
    assert "-mcpu=${VS_CPU}" in (lib / "cmake/arm-none-eabi.cmake").read_text()
    assert 'VS_CPU "cortex-m3"' in (lib / "cmake/arm-none-eabi.cmake").read_text()
    _same_sources_as_make({p.name: p.read_bytes() for p in [lib / "model.h", *(lib / "kernels").iterdir()]},
                          make_project)
    # an application that uses the library through add_subdirectory, cross-compiled with the toolchain file
    app = tmp_path / "app"
    app.mkdir()
    (app / "CMakeLists.txt").write_text(f"cmake_minimum_required(VERSION 3.13)\nproject(app C)\n"
                                        f"add_subdirectory({lib} verisparse_model)\nadd_executable(app.elf main.c)\n"
                                        "target_link_libraries(app.elf PRIVATE verisparse_model)\n")
    (app / "main.c").write_text('#include "model.h"\nint main(void)\n{\n    vs_model_input()[0] = 1;\n'
                                "    vs_model_invoke();\n    return vs_model_output()[0];\n}\n")
    build = tmp_path / "build"
    for cmd in (["cmake", "-S", str(app), "-B", str(build), f"-DCMAKE_TOOLCHAIN_FILE={lib}/cmake/arm-none-eabi.cmake"],
                ["cmake", "--build", str(build)]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    head = subprocess.run(["arm-none-eabi-readelf", "-h", "-A", str(build / "app.elf")], capture_output=True,
                          text=True).stdout
    assert "ARM" in head and "v7" in head  # Cortex-M3: ARMv7-M
    symbols = subprocess.run(["arm-none-eabi-nm", str(build / "app.elf")], capture_output=True, text=True).stdout
    assert " T vs_model_invoke" in symbols and " T vs_conv2d" in symbols


@needs_gcc
def test_zephyr_layout_is_a_module_that_compiles_with_zephyrs_flags(model, make_project, tmp_path):
    out = tmp_path / "module"
    generate_firmware(model, "mps2-an386", out, layout="zephyr")
    module = yaml.safe_load((out / "zephyr/module.yml").read_text())
    assert module["name"] == "verisparse_model"
    assert (out / module["build"]["cmake"] / "CMakeLists.txt").is_file()
    assert "config VERISPARSE_MODEL" in (out / module["build"]["kconfig"]).read_text()
    cmake = (out / "CMakeLists.txt").read_text()
    assert "if(CONFIG_VERISPARSE_MODEL)" in cmake and "zephyr_library_named(verisparse_model)" in cmake
    listed = cmake[cmake.index("zephyr_library_sources(") + 23:cmake.index(")", cmake.index("zephyr_library_sources("))]
    listed = listed.split()
    assert {Path(n).name for n in listed} == {n for n in _library_sources(make_project) if n.endswith(".c")}
    _same_sources_as_make({Path(n).name: (out / n).read_bytes() for n in listed}, make_project)
    # the flags Zephyr's gcc toolchain passes for a Cortex-M4 (cmake/compiler/gcc, arch/arm), minus its SDK's
    # autoconf.h and libc: freestanding, -Os, C11
    flags = ["-mcpu=cortex-m4", "-mthumb", "-mabi=aapcs", "-Os", "-std=c11", "-ffreestanding", "-fno-common",
             "-fno-strict-aliasing", "-ffunction-sections", "-fdata-sections", "-fno-asynchronous-unwind-tables",
             "-fno-pie", "-fno-pic", "-Wall", "-Wformat", "-Wformat-security", "-Wdouble-promotion",
             "-Wpointer-arith", "-Werror"]
    objs = _compile([out / n for n in listed], [out, out / "kernels"], flags, tmp_path / "obj")
    assert len(objs) == len(listed)


@needs_gcc
def test_arduino_layout_is_a_library_that_compiles_as_the_ide_would(model, make_project, tmp_path):
    out = tmp_path / "VeriSparseModel"
    generate_firmware(model, "mps2-an386", out, layout="arduino")
    props = configparser.ConfigParser()
    props.read_string("[library]\n" + (out / "library.properties").read_text())
    p = props["library"]
    for key in ("name", "version", "author", "maintainer", "sentence", "paragraph", "category", "url",
                "architectures"):
        assert p.get(key), key
    assert p["includes"] == "model.h" and (out / "src/model.h").is_file()
    sources = {q.name for q in (out / "src").iterdir()}
    assert sources == _library_sources(make_project)  # Arduino compiles everything in src/, flat
    _same_sources_as_make({q.name: q.read_bytes() for q in (out / "src").iterdir()}, make_project)
    # the SAMD core's C flags (Arduino Zero, Cortex-M0+), as arduino-cli passes them, made strict
    flags = ["-mcpu=cortex-m0plus", "-mthumb", "-Os", "-std=gnu11", "-ffunction-sections", "-fdata-sections",
             "-nostdlib", "--param", "max-inline-insns-single=500", "-DARDUINO=10819", "-DARDUINO_ARCH_SAMD",
             "-Wall", "-Wextra", "-Werror"]
    c_files = sorted((out / "src").glob("*.c"))
    assert len(_compile(c_files, [out / "src"], flags, tmp_path / "obj")) == len(c_files)
    _check_c_linkage(tmp_path, out / "src", flags)


@needs_gcc
def test_platformio_layout_is_a_library_whose_manifest_names_every_source(model, make_project, tmp_path):
    out = tmp_path / "lib"
    generate_firmware(model, "mps2-an386", out, layout="platformio")
    manifest = json.loads((out / "library.json").read_text())
    assert manifest["name"] and manifest["version"] and manifest["headers"] == "model.h"
    build = manifest["build"]
    src = out / build["srcDir"]
    assert (out / build["includeDir"] / "model.h").is_file()
    assert build["srcFilter"][0] == "-<*>"
    named = {f[2:-1] for f in build["srcFilter"][1:]}
    assert all(f.startswith("+<") for f in build["srcFilter"][1:])
    assert named == {n for n in _library_sources(make_project) if n.endswith(".c")}
    assert named == {q.name for q in src.glob("*.c")}
    _same_sources_as_make({q.name: q.read_bytes() for q in src.iterdir()}, make_project)
    # PlatformIO's ststm32 platform (Nucleo-F446RE, Cortex-M4F) C flags
    flags = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-Os", "-std=gnu11",
             "-ffunction-sections", "-fdata-sections", "-Wall", "-nostdlib", "-Wextra", "-Werror"]
    assert len(_compile([src / n for n in sorted(named)], [out / build["includeDir"]], flags,
                        tmp_path / "obj")) == len(named)


def test_library_layouts_refuse_run_and_the_cli_names_the_layouts(model, tmp_path):
    with pytest.raises(VeriSparseError, match="--run builds and runs the Makefile project"):
        generate_firmware(model, "mps2-an386", tmp_path / "x", run=True, layout="cmake")
    r = CliRunner().invoke(main, ["firmware", str(model), "--layout", "bazel", "--out", str(tmp_path / "y")])
    assert r.exit_code == 2 and "cmake" in r.output and "zephyr" in r.output
    r = CliRunner().invoke(main, ["firmware", str(model), "--layout", "zephyr", "--out", str(tmp_path / "z")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "z/firmware.json").read_text())
    assert report["layout"] == "zephyr" and report["vectors"] == 0
